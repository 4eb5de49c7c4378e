"""Where generated videos go: a local directory by default, or S3 through prefect-aws's ``S3Bucket`` block.

A :class:`StorageSpec` is a small, picklable description (a directory, or the *name* of a saved ``S3Bucket``
block plus a prefix) that crosses task boundaries; :meth:`StorageSpec.open` turns it into a live store
inside the task that uses it, so no client object ever crosses a task runner.

Examples:
    ```python
    from kling_prefect.storage import StorageSpec

    local = StorageSpec(directory="kling-output/run-1")
    s3 = StorageSpec(directory="kling-output/run-1", s3_bucket_block="videos", prefix="kling/run-1")
    store = await s3.open()
    stored = await store.put("kling-output/run-1/clip-01.mp4", "clip-01.mp4")
    stored.uri  # 's3://my-bucket/kling/run-1/clip-01.mp4'
    ```
"""

from __future__ import annotations

import base64
import mimetypes
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
PRESIGNED_URL_SECONDS = 3600  # frames handed to the vendor: it fetches them within minutes
LINK_URL_SECONDS = 7 * 24 * 3600  # links in run artifacts: SigV4's maximum, so a week-old summary still opens
MAX_DATA_URI_BYTES = 10 * 1024 * 1024


def safe_name(text: str, *, max_length: int = 80, fallback: str = "item") -> str:
    """A file-name-safe version of ``text`` (job ids, prompts, run keys): no separators, no ``..``.

    Examples:
        ```python
        safe_name("../../etc/passwd")  # 'etc-passwd'
        ```
    """
    cleaned = _UNSAFE.sub("-", text).strip(".-_")
    cleaned = re.sub(r"\.{2,}", ".", cleaned)[:max_length].strip(".-_")
    return cleaned or fallback


def safe_key(*parts: str) -> str:
    """A relative object key made of :func:`safe_name` parts joined by ``/`` (never absolute, never ``..``)."""
    return "/".join(safe_name(p) for p in parts if p)


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key: lower-case letters, digits and dashes only (Prefect's rule)."""
    key = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    return re.sub(r"-{2,}", "-", key)[:100].strip("-") or "kling"


def data_uri(path: str | os.PathLike[str]) -> str:
    """An inline ``data:`` URI for a small file (frames handed to image-to-video when there is no S3)."""
    raw = Path(path).read_bytes()
    if len(raw) > MAX_DATA_URI_BYTES:
        raise ValueError(f"{path} is {len(raw)} bytes, too large to inline as a data URI")
    mime = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


@dataclass(frozen=True)
class StoredObject:
    """A file in the user's storage. ``uri`` is ``file://...`` or ``s3://bucket/key``; ``url`` is a link to it
    (a presigned GET for S3); ``local_path`` a local copy when there is one."""

    uri: str
    key: str
    size_bytes: int
    url: str | None = None
    local_path: str | None = None


class VideoStore(Protocol):
    """What flows need of a store."""

    description: str

    async def put(self, local_path: str | os.PathLike[str], key: str) -> StoredObject: ...

    async def public_url(self, local_path: str | os.PathLike[str], key: str) -> str: ...


class LocalStore:
    """Files under one directory; keys are relative paths that cannot escape it."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.root = Path(directory).resolve()
        self.description = f"local directory {self.root}"

    def path_for(self, key: str) -> Path:
        target = (self.root / PurePosixPath(key)).resolve()
        if not target.is_relative_to(self.root):
            raise ValueError(f"storage key {key!r} escapes {self.root}")
        return target

    async def put(self, local_path: str | os.PathLike[str], key: str) -> StoredObject:
        source = Path(local_path).resolve()
        target = self.path_for(key)
        if source != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
            await anyio.to_thread.run_sync(shutil.copyfile, source, temp)
            os.replace(temp, target)
        return StoredObject(
            uri=target.as_uri(), key=key, size_bytes=target.stat().st_size, url=target.as_uri(), local_path=str(target)
        )

    async def public_url(self, local_path: str | os.PathLike[str], key: str) -> str:
        # A local directory has no URL the vendor can fetch: inline the (small) file.
        return data_uri(local_path)


class S3Store:
    """Objects in an S3 (or S3-compatible) bucket through prefect-aws's ``S3Bucket``; uploads stream from disk
    (multipart for large files) and links are presigned GET URLs."""

    def __init__(self, bucket: Any, prefix: str = "", local_directory: str | os.PathLike[str] | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.local = LocalStore(local_directory) if local_directory else None
        self.description = f"s3://{bucket.bucket_name}/{self._full_key('')}"

    def _full_key(self, key: str) -> str:
        joined = "/".join(p for p in (self.bucket.bucket_folder.strip("/"), self.prefix, key) if p)
        return joined

    def presign(self, full_key: str, expires: int = PRESIGNED_URL_SECONDS) -> str:
        client = self.bucket.credentials.get_s3_client()
        return client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket.bucket_name, "Key": full_key}, ExpiresIn=expires
        )

    async def put(self, local_path: str | os.PathLike[str], key: str) -> StoredObject:
        relative = "/".join(p for p in (self.prefix, key) if p)
        full_key = await self.bucket.aupload_from_path(str(local_path), relative)
        local_copy = await self.local.put(local_path, key) if self.local else None
        url = await anyio.to_thread.run_sync(self.presign, full_key, LINK_URL_SECONDS)
        return StoredObject(
            uri=f"s3://{self.bucket.bucket_name}/{full_key}",
            key=full_key,
            size_bytes=Path(local_path).stat().st_size,
            url=url,
            local_path=local_copy.local_path if local_copy else None,
        )

    async def public_url(self, local_path: str | os.PathLike[str], key: str) -> str:
        stored = await self.put(local_path, key)
        return await anyio.to_thread.run_sync(self.presign, stored.key, PRESIGNED_URL_SECONDS)


class StorageSpec(BaseModel):
    """A picklable description of where outputs go.

    Attributes:
        directory: local directory for outputs (and the local working copies when S3 is used).
        s3_bucket_block: name of a saved prefect-aws ``S3Bucket`` block; when set, outputs are uploaded there.
        prefix: key prefix inside the bucket.
    """

    model_config = ConfigDict(frozen=True)

    directory: str = Field(default="kling-output")
    s3_bucket_block: str | None = None
    prefix: str = ""

    @property
    def uses_s3(self) -> bool:
        return bool(self.s3_bucket_block)

    async def open(self) -> LocalStore | S3Store:
        """The live store (loads the S3 block by name when configured)."""
        if self.s3_bucket_block:
            from prefect_aws.s3 import S3Bucket

            bucket = await S3Bucket.aload(self.s3_bucket_block)
            return S3Store(bucket, self.prefix, local_directory=self.directory)
        return LocalStore(self.directory)
