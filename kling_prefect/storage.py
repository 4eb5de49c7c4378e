"""Where generated videos go: a local directory by default, or S3 through prefect-aws's ``S3Bucket`` block.

A :class:`StorageSpec` is a small, picklable description (a directory, or the *name* of a saved ``S3Bucket``
block plus a prefix) that crosses task boundaries; :meth:`StorageSpec.open` turns it into a live store inside
the task that uses it, so no client object ever crosses a task runner. Left at its defaults, a run's files go
under ``kling-output/<run key>/`` (and ``kling/<run key>/`` in the bucket): two run keys never share a folder.

A paid clip is never lost to another one: every video is stored with a small record beside it
(``<step>.json``: the job id, model, cost, size), and :func:`claim_key` decides where a job's video goes. A
key that holds this job's video already is reused (storing the same job again is a no-op); a key that holds
anything else (another job's clip, or a file without a record) is left alone, and the video goes under
``<step>.<job id>.mp4`` beside it, with a warning. Reading a key and writing it are two requests: attempts
storing at one key at the same moment (in any process) take turns under a lease on it, held by the store task
(:func:`~kling_prefect.tasks.store.destination_lease`), so neither writes over what the other stored.

Examples:
    ```python
    from kling_prefect.storage import StorageSpec

    local = StorageSpec()  # kling-output/<run key>/
    s3 = StorageSpec(s3_bucket_block="videos")  # s3://<bucket>/kling/<run key>/, local copies as above
    store = await s3.open("run-1")
    stored = await store.put("clip-01.mp4", "clip-01.mp4")
    stored.uri  # 's3://my-bucket/kling/run-1/clip-01.mp4'
    ```
"""

from __future__ import annotations

import base64
import json
import logging
import mimetypes
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field

from kling_prefect.atomic import atomic_path

__all__ = [
    "DEFAULT_OUTPUT_ROOT",
    "DEFAULT_S3_PREFIX_ROOT",
    "LocalStore",
    "S3Store",
    "StorageSpec",
    "StoredObject",
    "VideoStore",
    "artifact_key",
    "claim_key",
    "data_uri",
    "record_key",
    "safe_key",
    "safe_name",
]

_log = logging.getLogger("kling_prefect.storage")
mimetypes.add_type("image/webp", ".webp")  # WebP keyframes inline as image/webp: Python 3.10's table lacks it
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
PRESIGNED_URL_SECONDS = 3600  # frames handed to the vendor: it fetches them within minutes
LINK_URL_SECONDS = 7 * 24 * 3600  # links in run artifacts: SigV4's maximum, so a week-old summary still opens
MAX_DATA_URI_BYTES = 10 * 1024 * 1024
DEFAULT_OUTPUT_ROOT = "kling-output"
DEFAULT_S3_PREFIX_ROOT = "kling"


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


def record_key(key: str) -> str:
    """The key of the record stored beside ``key`` (``clip-01.mp4`` -> ``clip-01.json``)."""
    stem = key.rsplit(".", 1)[0] if "." in key.rsplit("/", 1)[-1] else key
    return f"{stem}.json"


def data_uri(path: str | os.PathLike[str]) -> str:
    """An inline ``data:`` URI for a small file (frames handed to image-to-video when there is no S3)."""
    raw = Path(path).read_bytes()
    if len(raw) > MAX_DATA_URI_BYTES:
        raise ValueError(f"{path} is {len(raw)} bytes, too large to inline as a data URI")
    mime = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(raw).decode('ascii')}"


@dataclass(frozen=True)
class StoredObject:
    """A file in the user's storage. ``uri`` is ``file://...`` or ``s3://bucket/key``; ``url`` a link that opens in
    a browser (a presigned GET for S3; ``None`` for local files, which browsers do not open from a web page);
    ``local_path`` a local copy when there is one."""

    uri: str
    key: str
    size_bytes: int
    url: str | None = None
    local_path: str | None = None


class VideoStore(Protocol):
    """What the tasks need of a store."""

    description: str

    async def put(self, local_path: str | os.PathLike[str], key: str, *, move: bool = False) -> StoredObject: ...

    async def get(self, key: str) -> StoredObject | None: ...

    async def read_record(self, key: str) -> dict[str, Any] | None: ...

    async def write_record(self, key: str, record: dict[str, Any]) -> None: ...

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

    def _object(self, target: Path, key: str) -> StoredObject:
        return StoredObject(uri=target.as_uri(), key=key, size_bytes=target.stat().st_size, local_path=str(target))

    async def put(self, local_path: str | os.PathLike[str], key: str, *, move: bool = False) -> StoredObject:
        """Write ``local_path`` under ``key`` atomically (``move``: rename it there instead of copying)."""
        source = Path(local_path).resolve()
        target = self.path_for(key)
        if source != target:

            def place() -> None:
                with atomic_path(target) as temporary:
                    if move:
                        os.replace(source, temporary)
                    else:
                        shutil.copyfile(source, temporary)

            await anyio.to_thread.run_sync(place)
        return self._object(target, key)

    async def get(self, key: str) -> StoredObject | None:
        target = self.path_for(key)
        return self._object(target, key) if target.is_file() else None

    async def read_record(self, key: str) -> dict[str, Any] | None:
        return _parse_record(self.path_for(record_key(key)), _read_bytes(self.path_for(record_key(key))))

    async def write_record(self, key: str, record: dict[str, Any]) -> None:
        target = self.path_for(record_key(key))
        with atomic_path(target) as temporary:
            temporary.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")

    async def public_url(self, local_path: str | os.PathLike[str], key: str) -> str:
        # A local directory has no URL the vendor can fetch: inline the (small) file.
        return data_uri(local_path)


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _parse_record(where: object, raw: bytes | None) -> dict[str, Any] | None:
    """A record's content; an unreadable record counts as a record of an unknown job (``job_id`` ``None``)."""
    if raw is None:
        return None
    try:
        record = json.loads(raw.decode("utf-8"))
    except ValueError:
        _log.warning("unreadable record %s: its file is treated as another job's", where)
        return {"job_id": None}
    return record if isinstance(record, dict) else {"job_id": None}


class S3Store:
    """Objects in an S3 (or S3-compatible) bucket through prefect-aws's ``S3Bucket``; uploads stream from disk
    (multipart for large files) and links are presigned GET URLs. Local working copies go to ``local_directory``.
    """

    def __init__(self, bucket: Any, prefix: str = "", local_directory: str | os.PathLike[str] | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.local = LocalStore(local_directory) if local_directory else None
        self.description = f"s3://{bucket.bucket_name}/{self._full_key('')}"

    def _relative(self, key: str) -> str:
        return "/".join(p for p in (self.prefix, key) if p)

    def _full_key(self, key: str) -> str:
        return "/".join(p for p in (self.bucket.bucket_folder.strip("/"), self.prefix, key) if p)

    def presign(self, full_key: str, expires: int = PRESIGNED_URL_SECONDS) -> str:
        client = self.bucket.credentials.get_s3_client()
        url: str = client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket.bucket_name, "Key": full_key}, ExpiresIn=expires
        )
        return url

    def _head(self, full_key: str) -> int | None:
        """The object's size, or ``None`` when there is none."""
        from botocore.exceptions import ClientError

        client = self.bucket.credentials.get_s3_client()
        try:
            answer = client.head_object(Bucket=self.bucket.bucket_name, Key=full_key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return int(answer["ContentLength"])

    async def _object(self, full_key: str, size: int, local_copy: StoredObject | None) -> StoredObject:
        url = await anyio.to_thread.run_sync(self.presign, full_key, LINK_URL_SECONDS)
        return StoredObject(
            uri=f"s3://{self.bucket.bucket_name}/{full_key}",
            key=full_key,
            size_bytes=size,
            url=url,
            local_path=local_copy.local_path if local_copy else None,
        )

    async def put(self, local_path: str | os.PathLike[str], key: str, *, move: bool = False) -> StoredObject:
        full_key = await self.bucket.aupload_from_path(str(local_path), self._relative(key))
        size = Path(local_path).stat().st_size
        local_copy = await self.local.put(local_path, key, move=move) if self.local else None
        return await self._object(full_key, size, local_copy)

    async def get(self, key: str) -> StoredObject | None:
        full_key = self._full_key(key)
        size = await anyio.to_thread.run_sync(self._head, full_key)
        if size is None:
            return None
        return await self._object(full_key, size, await self.local.get(key) if self.local else None)

    async def read_record(self, key: str) -> dict[str, Any] | None:
        full_key = self._full_key(record_key(key))
        if await anyio.to_thread.run_sync(self._head, full_key) is None:
            return None
        return _parse_record(full_key, await self.bucket.aread_path(self._relative(record_key(key))))

    async def write_record(self, key: str, record: dict[str, Any]) -> None:
        text = json.dumps(record, indent=2, default=str).encode("utf-8")
        await self.bucket.awrite_path(self._relative(record_key(key)), text)
        if self.local:
            await self.local.write_record(key, record)

    async def public_url(self, local_path: str | os.PathLike[str], key: str) -> str:
        stored = await self.put(local_path, key)
        return await anyio.to_thread.run_sync(self.presign, stored.key, PRESIGNED_URL_SECONDS)


async def claim_key(store: VideoStore, key: str, owner: str) -> tuple[str, dict[str, Any] | None]:
    """Where ``owner``'s file (a job id, or a joined video's inputs) goes, and its record if it is there already.

    ``key`` when it is free or holds ``owner``'s file already; otherwise (another owner's file, or a file
    without a record) ``<stem>.<owner>.<ext>`` beside it, so nothing stored is ever replaced.
    """
    stem, dot, extension = key.rpartition(".")
    if not dot:
        stem, extension = key, ""
    candidates = [key, f"{stem}.{safe_name(owner, max_length=40)}{dot}{extension}"]
    for index, candidate in enumerate(candidates):
        record = await store.read_record(candidate)
        existing = await store.get(candidate)
        if record is not None and record.get("job_id") == owner:
            return candidate, record if existing is not None else None
        if record is None and existing is None:
            if index:
                _log.warning("%s holds another job's file; storing job %s as %s instead", key, owner, candidate)
            return candidate, None
    raise FileExistsError(
        f"both {candidates[0]!r} and {candidates[1]!r} hold files of other jobs in {store.description}; "
        "move them away or choose another output directory"
    )


class StorageSpec(BaseModel):
    """A picklable description of where outputs go.

    Attributes:
        directory: local directory for outputs (and the local working copies when S3 is used); default
            ``kling-output/<run key>``.
        s3_bucket_block: name of a saved prefect-aws ``S3Bucket`` block; when set, outputs are uploaded there.
        prefix: key prefix inside the bucket; default ``kling/<run key>``.
    """

    model_config = ConfigDict(frozen=True)

    directory: str | None = Field(default=None)
    s3_bucket_block: str | None = None
    prefix: str | None = None

    def for_run(self, run_key: str) -> StorageSpec:
        """This spec with the defaults that depend on the run filled in (``<root>/<run key>``)."""
        key = safe_name(run_key)
        return self.model_copy(
            update={
                "directory": self.directory if self.directory is not None else str(Path(DEFAULT_OUTPUT_ROOT) / key),
                "prefix": self.prefix if self.prefix is not None else f"{DEFAULT_S3_PREFIX_ROOT}/{key}",
            }
        )

    @property
    def uses_s3(self) -> bool:
        return bool(self.s3_bucket_block)

    def work_directory(self, run_key: str) -> Path:
        """The local directory of the run's files (the outputs, or their working copies with S3)."""
        return Path(self.for_run(run_key).directory or DEFAULT_OUTPUT_ROOT)

    def describe(self, run_key: str) -> str:
        spec = self.for_run(run_key)
        if spec.s3_bucket_block:
            return f"S3 bucket block {spec.s3_bucket_block!r}, prefix {spec.prefix!r}"
        return f"local directory {Path(spec.directory or DEFAULT_OUTPUT_ROOT).resolve()}"

    async def open(self, run_key: str) -> LocalStore | S3Store:
        """The live store of ``run_key``'s files (loads the S3 block by name when configured)."""
        spec = self.for_run(run_key)
        directory = spec.directory or DEFAULT_OUTPUT_ROOT
        if spec.s3_bucket_block:
            from prefect_aws.s3 import S3Bucket

            bucket = await S3Bucket.aload(spec.s3_bucket_block)
            return S3Store(bucket, spec.prefix or "", local_directory=directory)
        return LocalStore(directory)
