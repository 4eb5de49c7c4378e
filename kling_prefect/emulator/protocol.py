"""A small HTTP/1.1 server on asyncio streams, built for fault injection.

Owning the byte stream (rather than using ``http.server`` or a framework) is what lets the emulator reset a
connection, stop halfway through a body or stall before answering at an exact point. Supported: request
line, headers, ``Content-Length`` and chunked request bodies, ``Expect: 100-continue``, keep-alive (HTTP/1.1
default, ``Connection: close`` honoured), HEAD, and streamed response bodies. Every response carries a
``Content-Length``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger("kling_prefect.emulator")

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024  # a 20 MB image as a base64 data URI is ~27 MB
SERVER_NAME = "shortapi-emulator"
LISTEN_BACKLOG = 2048  # benchmarks open hundreds of connections at once


class Abort(Exception):
    """Raised by a handler to reset the connection (TCP RST) instead of answering."""


class ProtocolError(Exception):
    """A request the server cannot parse; answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    """One parsed HTTP request. Header names are lower-cased; repeated headers are joined with ``, ``."""

    method: str
    target: str
    path: str
    query: dict[str, str]
    version: str
    headers: dict[str, str]
    body: bytes = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        """A header's value by case-insensitive name."""
        return self.headers.get(name.lower(), default)

    @property
    def keep_alive(self) -> bool:
        """Whether the client lets the connection stay open after this request."""
        tokens = {token.strip().lower() for token in (self.header("connection") or "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


BodyStream = Callable[[], AsyncGenerator[bytes, None]]


@dataclass
class Response:
    """A response. Either ``body`` (small, in memory) or ``stream`` (a factory of chunks, ``length`` bytes).

    ``truncate_fraction``: send only that fraction of the body after full headers, then close the
    connection (the client sees an incomplete body). ``close``: close the connection after this response.
    """

    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    stream: BodyStream | None = None
    length: int = 0
    truncate_fraction: float | None = None
    close: bool = False

    @property
    def content_length(self) -> int:
        """Bytes of body announced in ``Content-Length``."""
        return self.length if self.stream is not None else len(self.body)

    @classmethod
    def json(cls, status: int, payload: Any, *, headers: list[tuple[str, str]] | None = None) -> Response:
        """A JSON response."""
        body = json.dumps(payload, separators=(",", ":")).encode()
        return cls(status, body, "application/json", list(headers or []))

    @classmethod
    def envelope_error(cls, status: int, message: str, *, code: int | None = None) -> Response:
        """The vendor's error envelope ``{"code": ..., "message": ...}`` with HTTP ``status``."""
        return cls.json(status, {"code": status if code is None else code, "message": message})


def reset_connection(writer: asyncio.StreamWriter) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0), discarding anything unsent."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# --------------------------------------------------------------------------------------------- reading


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request | None:
    """Read one request; ``None`` when the client closed the connection cleanly between requests."""
    while True:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise ProtocolError(400, "incomplete request head") from None
            return None
        except asyncio.LimitOverrunError:
            raise ProtocolError(431, "request head too large") from None
        text = raw.decode("latin-1").lstrip("\r\n")
        if text:
            break
    method, target, version, headers = _parse_head(text)
    parts = urlsplit(target)
    query = {key: values[0] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
    request = Request(method, target, unquote(parts.path) or "/", query, version, headers)
    request.body = await _read_body(reader, writer, request)
    return request


def _parse_head(text: str) -> tuple[str, str, str, dict[str, str]]:
    lines = text.rstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[0].isalpha():
        raise ProtocolError(400, "malformed request line")
    method, target, version = parts
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise ProtocolError(505, f"unsupported protocol version {version!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ProtocolError(400, "malformed header line")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return method.upper(), target, version, headers


async def _read_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: Request) -> bytes:
    encoding = request.header("transfer-encoding")
    length_text = request.header("content-length")
    if encoding is not None:
        if encoding.strip().lower() != "chunked":
            raise ProtocolError(501, f"unsupported transfer-encoding {encoding!r}")
        await _continue(writer, request)
        return await _read_chunked(reader)
    if length_text is None:
        return b""
    try:
        length = int(length_text)
    except ValueError:
        raise ProtocolError(400, "invalid content-length") from None
    if length < 0:
        raise ProtocolError(400, "invalid content-length")
    if length > MAX_BODY_BYTES:
        raise ProtocolError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
    if length:
        await _continue(writer, request)
    return await reader.readexactly(length)


async def _continue(writer: asyncio.StreamWriter, request: Request) -> None:
    if (request.header("expect") or "").lower() == "100-continue" and request.version == "HTTP/1.1":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError(400, "malformed chunk size") from None
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return bytes(body)
        if len(body) + size > MAX_BODY_BYTES:
            raise ProtocolError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise ProtocolError(400, "malformed chunk")


# --------------------------------------------------------------------------------------------- writing


def _head_bytes(response: Response, keep_alive: bool) -> bytes:
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Date: {formatdate(usegmt=True)}",
        f"Server: {SERVER_NAME}",
    ]
    if response.content_type:
        lines.append(f"Content-Type: {response.content_type}")
    lines.extend(f"{name}: {value}" for name, value in response.headers)
    lines.append(f"Content-Length: {response.content_length}")
    lines.append(f"Connection: {'keep-alive' if keep_alive else 'close'}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def write_response(
    writer: asyncio.StreamWriter, response: Response, *, head_only: bool, keep_alive: bool
) -> bool:
    """Send ``response``; ``False`` when the connection must not be reused (truncated or client gone)."""
    head = _head_bytes(response, keep_alive)
    length = response.content_length
    limit = length if response.truncate_fraction is None else int(length * response.truncate_fraction)
    if head_only:
        writer.write(head)
        await writer.drain()
        return True
    if response.stream is None:
        writer.write(head + response.body[:limit])
        await writer.drain()
    else:
        writer.write(head)
        if not await _write_stream(writer, response.stream, limit):
            return False
    if response.truncate_fraction is not None:
        writer.close()  # flushes what was written, then FIN: the client sees a short body
        return False
    return True


async def _write_stream(writer: asyncio.StreamWriter, stream: BodyStream, limit: int) -> bool:
    sent = 0
    async with contextlib.aclosing(stream()) as chunks:
        async for chunk in chunks:
            if sent >= limit:
                break
            if writer.transport.is_closing():
                return False
            piece = chunk if sent + len(chunk) <= limit else chunk[: limit - sent]
            writer.write(piece)
            sent += len(piece)
            await writer.drain()
    return True


# ---------------------------------------------------------------------------------------------- server

Dispatch = Callable[[Request], Awaitable[Response]]


class HTTPServer:
    """Serves ``dispatch`` over HTTP/1.1 with keep-alive; tracks connections so :meth:`close` can end them."""

    def __init__(self, dispatch: Dispatch, on_connect: Callable[[], None] | None = None) -> None:
        self._dispatch = dispatch
        self._on_connect = on_connect
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}

    async def start(self, host: str, port: int) -> int:
        """Bind and start accepting; returns the bound port."""
        self._server = await asyncio.start_server(
            self._serve_connection, host, port, limit=MAX_HEADER_BYTES, backlog=LISTEN_BACKLOG
        )
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        """Stop accepting, reset open connections and wait for their handlers to finish."""
        if self._server is not None:
            self._server.close()
        for task, writer in list(self._connections.items()):
            writer.transport.abort()
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        if self._on_connect is not None:
            self._on_connect()
        try:
            await self._serve_requests(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # the client went away mid-request or mid-response
        except asyncio.CancelledError:
            pass  # server shutdown
        finally:
            self._connections.pop(task, None)
            writer.close()

    async def _serve_requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request = await read_request(reader, writer)
            except ProtocolError as exc:
                error = Response.envelope_error(exc.status, exc.message)
                await write_response(writer, error, head_only=False, keep_alive=False)
                return
            if request is None:
                return
            try:
                response = await self._dispatch(request)
            except Abort:
                reset_connection(writer)
                return
            except Exception:
                logger.exception("unhandled error serving %s %s", request.method, request.target)
                response = Response.envelope_error(500, "internal emulator error")
            keep_alive = request.keep_alive and not response.close
            reusable = await write_response(writer, response, head_only=request.method == "HEAD", keep_alive=keep_alive)
            if not (reusable and keep_alive):
                return
