"""Files several processes build or read at once: a lock per thing built, atomic writes, strict JSON (NaN as null)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd
from filelock import FileLock


def build_lock(path: str | os.PathLike) -> FileLock:
    """The inter-process lock of building ``path``: ``<path>.lock`` beside it, waited for. Hold it around
    check-build-publish, so the second process finds what the first built."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.with_name(path.name + ".lock")))


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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def jsonable(obj: Any) -> Any:
    """``obj`` as JSON values: DataFrames as lists of records, dataclasses as dicts, numpy and torch numbers
    and arrays as numbers and lists, non-finite floats as None, paths, devices and dtypes as strings."""
    if isinstance(obj, pd.DataFrame):
        return [jsonable(r) for r in obj.to_dict(orient="records")]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.ndarray) or (hasattr(obj, "tolist") and hasattr(obj, "dtype")):
        return jsonable(obj.tolist())
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path) or type(obj).__name__ in ("device", "dtype"):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON (``jsonable``), written atomically."""
    atomic_write_bytes(path, (json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist (has that run finished?)")
    return json.loads(path.read_text())


def write_csv(path: str | os.PathLike, frame: pd.DataFrame) -> None:
    """A DataFrame as CSV (gzipped when ``path`` ends in .gz), written atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, compression="gzip" if path.suffix == ".gz" else None)
