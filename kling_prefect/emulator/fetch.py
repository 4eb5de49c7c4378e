"""Fetching the images of an image-to-video job (its ``images`` and its elements'), as the vendor does right
after a job is created.

http(s) URLs are downloaded with a 10 s overall timeout and a 20 MB cap; ``data:`` URIs are decoded. The
bytes must look like an image (PNG, JPEG, WebP, GIF or BMP signature), as the vendor would refuse others.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from urllib.parse import unquote_to_bytes, urlsplit

import httpx

MAX_IMAGE_BYTES = 20 * 1024 * 1024
FETCH_TIMEOUT = 10.0

_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"BM", "bmp"),
)


class ImageFetchError(Exception):
    """An image could not be fetched or is not an image; the message says why."""


def describe_ref(ref: str) -> str:
    """A short, loggable form of an image reference (data URIs are not repeated in full)."""
    if ref.startswith("data:"):
        head = ref.split(",", 1)[0]
        return f"{head},... ({len(ref)} characters)"
    return ref if len(ref) <= 200 else ref[:197] + "..."


def image_format(data: bytes) -> str | None:
    """The image format named by ``data``'s signature, or ``None``."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    return None


def decode_data_uri(uri: str) -> bytes:
    """The bytes of a ``data:`` URI (base64 or percent-encoded)."""
    header, sep, payload = uri[len("data:") :].partition(",")
    if not sep:
        raise ImageFetchError("malformed data URI (no comma)")
    if header.lower().endswith(";base64"):
        try:
            return base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageFetchError(f"invalid base64 in data URI: {exc}") from None
    return unquote_to_bytes(payload)


async def _download(client: httpx.AsyncClient, url: str) -> bytes:
    async with client.stream("GET", url, timeout=FETCH_TIMEOUT, follow_redirects=True) as response:
        if response.status_code != 200:
            raise ImageFetchError(f"HTTP {response.status_code}")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_IMAGE_BYTES:
            raise ImageFetchError(f"image is {int(declared)} bytes, over the {MAX_IMAGE_BYTES} byte limit")
        data = bytearray()
        async for chunk in response.aiter_bytes():
            data += chunk
            if len(data) > MAX_IMAGE_BYTES:
                raise ImageFetchError(f"image is over the {MAX_IMAGE_BYTES} byte limit")
        return bytes(data)


async def fetch_image(client: httpx.AsyncClient, ref: str) -> bytes:
    """The bytes of one image reference; :class:`ImageFetchError` saying why when it cannot be had."""
    if ref.startswith("data:"):
        data = decode_data_uri(ref)
    elif urlsplit(ref).scheme.lower() in ("http", "https"):
        try:
            data = await asyncio.wait_for(_download(client, ref), FETCH_TIMEOUT)
        except (TimeoutError, httpx.TimeoutException):
            raise ImageFetchError(f"timed out after {FETCH_TIMEOUT:g} s") from None
        except httpx.HTTPError as exc:
            raise ImageFetchError(f"{type(exc).__name__}: {exc}") from None
    else:
        raise ImageFetchError("unsupported URL scheme (use http, https or data)")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageFetchError(f"image is over the {MAX_IMAGE_BYTES} byte limit")
    if image_format(data) is None:
        raise ImageFetchError("not a PNG, JPEG, WebP, GIF or BMP image")
    return data
