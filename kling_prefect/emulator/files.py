"""Serving result files like a presigned object store: byte ranges, streamed bodies, S3-style errors.

A served result is the rendered MP4 followed, when ``result_padding_bytes`` is set, by one top-level MP4
``free`` box of that size (header + zeros), so large downloads stay valid MP4s without large files on disk.
Bodies are streamed in chunks: memory use does not grow with the size served.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from pathlib import Path
from xml.sax.saxutils import escape

from kling_prefect.emulator.protocol import Response

FILE_CHUNK = 256 * 1024
ZERO_CHUNK = 1024 * 1024
_ZEROS = bytes(ZERO_CHUNK)


class RangeNotSatisfiable(Exception):
    """The requested byte range starts beyond the end of the file."""


class ResultBody:
    """The bytes of one served result: file, then an optional ``free`` padding box."""

    def __init__(self, path: Path, padding_header: bytes = b"", padding_bytes: int = 0) -> None:
        self.path = path
        self.file_size = path.stat().st_size
        self.padding_header = padding_header
        self.padding_bytes = padding_bytes

    @property
    def size(self) -> int:
        """Total bytes served for a full download."""
        return self.file_size + self.padding_bytes

    async def iter_range(self, start: int, end: int) -> AsyncGenerator[bytes, None]:
        """Yield bytes ``[start, end)`` in chunks."""
        position = start
        file_end = min(end, self.file_size)
        if position < file_end:
            with self.path.open("rb") as handle:
                handle.seek(position)
                while position < file_end:
                    chunk = handle.read(min(FILE_CHUNK, file_end - position))
                    if not chunk:
                        raise OSError(f"{self.path} shrank while being served")
                    position += len(chunk)
                    yield chunk
        header_end = min(end, self.file_size + len(self.padding_header))
        if position < header_end:
            yield self.padding_header[position - self.file_size : header_end - self.file_size]
            position = header_end
        zeros = memoryview(_ZEROS)
        while position < end:
            count = min(ZERO_CHUNK, end - position)
            yield zeros[:count]  # type: ignore[misc]
            position += count


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The ``[start, end)`` of a single ``Range: bytes=...`` header, or ``None`` to serve everything.

    Multiple ranges and malformed headers are ignored (allowed by RFC 9110); a range starting at or past
    the end raises :class:`RangeNotSatisfiable`.
    """
    if not header or not header.strip().lower().startswith("bytes="):
        return None
    spec = header.strip()[len("bytes=") :].strip()
    if "," in spec:
        return None
    first, sep, last = spec.partition("-")
    if not sep or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()):
        return None
    if last and not last.isdigit():
        return None
    if not first:  # suffix: the last N bytes
        count = int(last)
        if count == 0:
            raise RangeNotSatisfiable
        return max(0, size - count), size
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiable
    end = size if not last else min(int(last) + 1, size)
    return start, end


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def s3_error(status: int, code: str, message: str, **extra: str) -> Response:
    """An S3-style XML error response."""
    fields = "".join(f"<{name}>{escape(value)}</{name}>" for name, value in extra.items())
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(code)}</Code><Message>{escape(message)}</Message>{fields}"
        f"<RequestId>{uuid.uuid4().hex[:16].upper()}</RequestId></Error>"
    )
    return Response(status, body.encode(), "application/xml")


def expired_error(expires_unix: float, now_unix: float) -> Response:
    """S3's answer to a presigned URL used after it expired."""
    return s3_error(403, "AccessDenied", "Request has expired", Expires=_iso(expires_unix), ServerTime=_iso(now_unix))
