"""Files that several processes build or read at once (chains on several GPUs, training command lines, a
second notebook): one lock per thing built, and writes that a reader sees whole or not at all.

- ``build_lock(path)``: a ``filelock.FileLock`` on ``<path>.lock`` beside ``path`` (a file or a folder). Hold
  it around build-or-reuse: check, build, publish; the second process to take it finds what the first built.
- ``atomic_path(path)``: a context manager giving a temporary name unique to this writer in ``path``'s folder
  (so two writers never share one), renamed onto ``path`` with ``os.replace`` when the block succeeds and
  removed when it fails. A reader of ``path`` sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from filelock import FileLock


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of ``path``: ``<path>.lock`` beside it (never inside a folder it locks)."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def build_lock(path: str | os.PathLike, timeout: float = -1) -> FileLock:
    """The inter-process lock of building ``path`` (``timeout`` seconds, -1: wait as long as it takes)."""
    lock = lock_path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(lock), timeout=timeout)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path unique to this writer beside ``path``; on success it replaces ``path``
    atomically, on failure it is removed (``path`` keeps what it held)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
