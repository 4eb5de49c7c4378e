"""One way to write a file so that readers never see half of it: a temporary file beside it, renamed over it.

Every file this package writes (downloads, stored clips, frames, joined videos, learned durations) goes through
:func:`atomic_path`, so a process killed mid-write leaves either the old file or the new one, never a torn one,
and at most a hidden temporary file that the next writer of the same destination removes.

Examples:
    ```python
    from kling_prefect.atomic import atomic_path

    with atomic_path("kling-output/run-1/clip-01.mp4") as temporary:
        temporary.write_bytes(b"...")  # renamed onto clip-01.mp4 only if this block succeeds
    ```
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TEMPORARY_MARK", "atomic_path", "remove_stale_temporaries"]

#: Part of every temporary name: ``.<name>.<random>.part<suffix>`` beside the destination.
TEMPORARY_MARK = ".part"


def _temporary_for(destination: Path) -> Path:
    # The destination's suffix is kept last, so tools that infer a format from the name (PyAV) still can.
    return destination.with_name(f".{destination.name}.{secrets.token_hex(4)}{TEMPORARY_MARK}{destination.suffix}")


def remove_stale_temporaries(destination: str | os.PathLike[str]) -> int:
    """Remove temporaries of ``destination`` left by a process killed mid-write; returns how many."""
    target = Path(destination)
    removed = 0
    if not target.parent.is_dir():
        return 0
    for stale in target.parent.glob(f".{target.name}.*{TEMPORARY_MARK}{target.suffix}"):
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
            removed += 1
    return removed


@contextlib.contextmanager
def atomic_path(destination: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``destination``; when the block succeeds, move it onto ``destination``.

    The parent directory is created. With ``fsync`` the data is flushed to disk before the rename (what a
    crash must not lose). On any error the temporary file is removed and ``destination`` is left untouched.
    The block may write the temporary path in any way (open it, hand it to PyAV, copy onto it).
    """
    target = Path(destination)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_for(target)
    try:
        yield temporary
        if fsync:
            descriptor = os.open(temporary, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
