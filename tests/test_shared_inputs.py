"""Shared inputs under concurrency (issue 17, item 1), and the data stage's files (``data.files``).

Several real processes that need the same generated datasets and the same uint8 caches at the same moment,
from an empty folder, all succeed and read the same tensors; a builder that finds another holding the lock
waits for it, then rebuilds (``overwrite``) or reuses what the other published; a failed writer leaves the
old file; the study's set-up prepares the shared inputs once before the chains start. The processes are
forked from this one (no interpreter start-up or imports to pay), each with its own file descriptors, so the
inter-process lock and the atomic renames are what keeps them apart.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mvlip_utils.data import cache as C
from mvlip_utils.data import folders as D
from mvlip_utils.data import generated as G
from mvlip_utils.data.files import (atomic_path, atomic_write_bytes, build_lock, jsonable, read_json, write_csv,
                                    write_json)

PROCESSES = 4


def _digest(blob: dict) -> str:
    digest = hashlib.sha256()
    for key in ("images", "labels"):
        digest.update(blob[key].contiguous().numpy().tobytes())
    digest.update(json.dumps(blob["paths"]).encode())
    return digest.hexdigest()


def _dataset(kind: str, folder: Path, workers: int = 1) -> Path:
    if kind == "shapes":
        return G.make_generated_dataset(folder / "shapes", n_classes=3, train_per_class=6, val_per_class=2,
                                        image_size=32, seed=1, progress=False)
    return G.make_imagenet_like_dataset(folder / "jpegs", n_classes=2, train_per_class=3, val_per_class=2,
                                        min_side=40, max_side=60, workers=workers, progress=False)


def _build_and_read(folder: str, barrier, queue) -> None:
    """One process: wait for the others, then ask for both datasets and their caches at once with them."""
    try:
        barrier.wait(timeout=60)
        out = {}
        for kind in ("shapes", "jpegs"):
            root = _dataset(kind, Path(folder), workers=2)
            train, _, _ = D.load_splits(root, image_size=24, progress=False)
            path = C.cache_preprocessed(train, Path(folder) / "cache" / f"{kind}-train-24px.pt", image_size=24,
                                        progress=False)
            out[kind] = (_digest(torch.load(path, weights_only=True)), len(C.CachedImageDataset(path)))
        queue.put(("ok", out))
    except BaseException as exc:  # noqa: BLE001 - the parent reports it
        queue.put(("error", f"{type(exc).__name__}: {exc}"))


def test_processes_building_the_same_datasets_and_caches_at_once_all_read_the_same(tmp_path):
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_build_and_read, args=(str(tmp_path), barrier, queue)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    try:
        out = [queue.get(timeout=120) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0] * PROCESSES
    assert [status for status, _ in out] == ["ok"] * PROCESSES, out
    for kind, n in (("shapes", 18), ("jpegs", 6)):
        assert len({result[kind] for _, result in out}) == 1  # every process read the same tensors
        assert out[0][1][kind][1] == n
        # what they built is what one process alone builds, and no temporary file is left behind
        root = _dataset(kind, tmp_path / "alone")
        train, _, _ = D.load_splits(root, image_size=24, progress=False)
        alone = torch.load(C.cache_preprocessed(train, tmp_path / "alone" / f"{kind}.pt", image_size=24,
                                                progress=False), weights_only=True)
        shared = torch.load(tmp_path / "cache" / f"{kind}-train-24px.pt", weights_only=True)
        assert torch.equal(alone["images"], shared["images"]) and torch.equal(alone["labels"], shared["labels"])
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.fixture
def small_train(tmp_path):
    root = G.make_generated_dataset(tmp_path / "shapes", n_classes=2, train_per_class=3, val_per_class=1,
                                    image_size=32, seed=0, progress=False)
    return D.load_splits(root, image_size=16, progress=False)[0]


def _builder_waiting_for_the_lock(train, path: Path, **kwargs):
    """A builder in another thread (its own open lock file, as another process has), started while this
    thread holds ``path``'s lock: (thread, what it returned or raised, its start time)."""
    result: dict = {}

    def build():
        result["started"] = time.perf_counter()
        try:
            result["path"] = C.cache_preprocessed(train, path, image_size=16, progress=False, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            result["error"] = exc
        result["ended"] = time.perf_counter()

    thread = threading.Thread(target=build)
    thread.start()
    return thread, result


def test_a_second_builder_waits_for_the_lock_then_builds(tmp_path, small_train):
    path = tmp_path / "cache" / "train.pt"
    C.cache_preprocessed(small_train, path, image_size=16, progress=False)
    built = path.stat().st_mtime_ns
    with build_lock(path):  # another builder holds the lock: one started now waits for it
        assert (tmp_path / "cache" / "train.pt.lock").is_file()  # the lock lies beside the file it guards
        thread, result = _builder_waiting_for_the_lock(small_train, path, overwrite=True)
        time.sleep(1.0)
        assert thread.is_alive() and "ended" not in result  # still waiting
        assert path.stat().st_mtime_ns == built
        released = time.perf_counter()
    thread.join(timeout=60)
    assert "error" not in result, result.get("error")
    assert result["ended"] >= released and result["path"] == path
    assert path.stat().st_mtime_ns != built  # overwrite=True rebuilt it once it had the lock


def test_a_second_builder_reuses_what_the_first_published_while_it_waited(tmp_path, small_train):
    path = tmp_path / "cache" / "train.pt"
    ready = C.cache_preprocessed(small_train, tmp_path / "elsewhere.pt", image_size=16, progress=False)
    with build_lock(path):
        thread, result = _builder_waiting_for_the_lock(small_train, path)  # finds no cache: waits to build
        time.sleep(0.5)
        assert thread.is_alive() and not path.exists()
        os.replace(ready, path)  # the first builder publishes its cache, then lets go
        published = path.stat()
    thread.join(timeout=60)
    assert "error" not in result, result.get("error")
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (published.st_ino, published.st_mtime_ns)  # checked again: reused
    assert C.CachedImageDataset(path).targets == small_train.targets


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second  # two writers never share a temporary name
        first.write_bytes(b"a")
        second.write_bytes(b"b")
    assert target.read_bytes() == b"a"  # the outer block ends last: its file replaces the inner one's
    atomic_write_bytes(tmp_path / "new" / "g.bin", b"whole")  # the folder is made
    assert (tmp_path / "new" / "g.bin").read_bytes() == b"whole"
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["g.bin"]


def test_jsonable_converts_what_measurements_hold():
    @dataclass
    class Settings:
        repeats: int = 3
        resolutions: tuple = (64, 128)

    out = jsonable({"s": Settings(), "t": torch.tensor([1.5, float("inf")]), "d": torch.device("cpu"),
                    "x": np.float64("nan"), "b": np.bool_(False), "i": np.int64(7), 3: Path("a/b"),
                    "f": pd.DataFrame({"a": [1, 2], "b": [0.5, math.nan]})})
    assert out == {"s": {"repeats": 3, "resolutions": [64, 128]}, "t": [1.5, None], "d": "cpu", "x": None,
                   "b": False, "i": 7, "3": "a/b", "f": [{"a": 1, "b": 0.5}, {"a": 2, "b": None}]}
    assert type(out["i"]) is int and type(out["b"]) is bool
    with pytest.raises(TypeError, match="object"):
        jsonable(object())


def test_strict_json_and_csv_files_round_trip(tmp_path):
    path = tmp_path / "sub" / "r.json"
    write_json(path, {"loss": float("nan"), "acc": np.float32(0.25), "n": np.int64(3)})
    text = path.read_text()
    assert "NaN" not in text and text.endswith("\n")
    assert read_json(path) == {"loss": None, "acc": 0.25, "n": 3}
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_json(tmp_path / "missing.json")
    frame = pd.DataFrame({"image": ["a.png", "b.png"], "right": [True, False], "loss": [0.5, 1.5]})
    write_csv(tmp_path / "per_image.csv.gz", frame)
    with open(tmp_path / "per_image.csv.gz", "rb") as handle:
        assert handle.read(2) == b"\x1f\x8b"  # gzipped, by its name
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "per_image.csv.gz"), frame)
    write_csv(tmp_path / "h.csv", frame)
    assert (tmp_path / "h.csv").read_text().splitlines()[0] == "image,right,loss"
    assert not list(tmp_path.rglob("*.tmp"))


def test_prepare_shared_inputs_builds_the_dataset_and_both_caches_once(tmp_path):
    from mvlip_utils.settings.profiles import get_config
    from mvlip_utils.train.experiment import cache_path, prepare_shared_inputs

    configs = [get_config("smoke", encoder=e, data_dir=str(tmp_path), data_cache=True, generated_classes=2,
                          generated_train_per_class=3, generated_val_per_class=1, image_size=32)
               for e in ("mambavision", "swin", "vit")]
    prepared = prepare_shared_inputs(configs, progress=False)
    root = prepared[0]
    assert prepared == [root, cache_path(configs[0], root, "train"), cache_path(configs[0], root, "val")]
    assert all(p.exists() for p in prepared)
    assert len(C.CachedImageDataset(prepared[1])) == 6 and len(C.CachedImageDataset(prepared[2])) == 2
    stamps = [p.stat().st_mtime_ns for p in prepared[1:]]
    assert prepare_shared_inputs(configs, progress=False) == prepared  # a second call reuses everything
    assert [p.stat().st_mtime_ns for p in prepared[1:]] == stamps
