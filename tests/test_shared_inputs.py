"""Shared inputs under concurrency (issue 17, item 1): several real processes (spawned, each its own Python)
that need the same generated dataset and the same uint8 cache at the same moment, from an empty folder, all
succeed and read the same tensors; the study's set-up prepares them once before the chains start."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mvlip_utils.data import cache as C
from mvlip_utils.data import folders as D
from mvlip_utils.data import generated as G
from mvlip_utils.data.shared_files import atomic_path, build_lock, lock_path

PROCESSES = 4
ROOT = Path(__file__).resolve().parents[1]


def _digest(blob: dict) -> str:
    digest = hashlib.sha256()
    for key in ("images", "labels"):
        digest.update(blob[key].contiguous().numpy().tobytes())
    digest.update(json.dumps(blob["paths"]).encode())
    return digest.hexdigest()


def _build_and_read(kind: str, folder: str, barrier, queue) -> None:
    """One process: wait for the others, then ask for the dataset and its cache at once with them."""
    try:
        barrier.wait(timeout=120)
        if kind == "shapes":
            root = G.make_generated_dataset(Path(folder) / "shapes", n_classes=3, train_per_class=6,
                                            val_per_class=2, image_size=32, seed=1, progress=False)
        else:
            root = G.make_imagenet_like_dataset(Path(folder) / "jpegs", n_classes=2, train_per_class=3,
                                                val_per_class=2, min_side=40, max_side=60, workers=2,
                                                progress=False)
        train, _, _ = D.load_splits(root, image_size=24, progress=False)
        path = C.cache_preprocessed(train, Path(folder) / "cache" / "train-24px.pt", image_size=24, progress=False)
        queue.put(("ok", _digest(torch.load(path, weights_only=True)), len(C.CachedImageDataset(path))))
    except BaseException as exc:  # noqa: BLE001 - the parent reports it
        queue.put(("error", f"{type(exc).__name__}: {exc}", 0))


def _run_at_once(kind: str, folder: Path) -> list[tuple]:
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_build_and_read, args=(kind, str(folder), barrier, queue)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    out = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out


@pytest.mark.parametrize("kind", ["shapes", "jpegs"])
def test_processes_building_the_same_dataset_and_cache_at_once_all_read_the_same(tmp_path, kind):
    out = _run_at_once(kind, tmp_path)
    assert [status for status, *_ in out] == ["ok"] * PROCESSES, out
    assert len({digest for _, digest, _ in out}) == 1
    assert {n for *_, n in out} == {18 if kind == "shapes" else 6}
    # what they built is what one process alone builds, and no temporary file is left behind
    alone = tmp_path / "alone"
    root = (G.make_generated_dataset(alone / "shapes", n_classes=3, train_per_class=6, val_per_class=2,
                                     image_size=32, seed=1, progress=False) if kind == "shapes" else
            G.make_imagenet_like_dataset(alone / "jpegs", n_classes=2, train_per_class=3, val_per_class=2,
                                         min_side=40, max_side=60, workers=1, progress=False))
    train, _, _ = D.load_splits(root, image_size=24, progress=False)
    path = C.cache_preprocessed(train, alone / "train-24px.pt", image_size=24, progress=False)
    blob = torch.load(path, weights_only=True)
    shared = torch.load(tmp_path / "cache" / "train-24px.pt", weights_only=True)
    assert torch.equal(blob["images"], shared["images"]) and torch.equal(blob["labels"], shared["labels"])
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_a_second_builder_waits_for_the_first_and_reuses_its_cache(tmp_path):
    root = G.make_generated_dataset(tmp_path / "shapes", n_classes=2, train_per_class=3, val_per_class=1,
                                    image_size=32, seed=0, progress=False)
    train, _, _ = D.load_splits(root, image_size=16, progress=False)
    path = tmp_path / "cache" / "train.pt"
    C.cache_preprocessed(train, path, image_size=16, progress=False)
    built = path.stat().st_mtime_ns
    with build_lock(path):  # another process holds the lock: a builder started now waits for it
        code = ("import time; from mvlip_utils.data import cache as C, folders as D; "
                f"t = D.load_splits({str(root)!r}, image_size=16, progress=False)[0]; "
                "print('ready', flush=True); s = time.time(); "
                f"C.cache_preprocessed(t, {str(path)!r}, image_size=16, overwrite=True, progress=False); "
                "print(time.time() - s)")
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(3)
        assert proc.poll() is None  # still waiting for the lock
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and float(out.strip()) > 2.5
    assert path.stat().st_mtime_ns != built  # overwrite=True rebuilt it once it had the lock
    assert lock_path(path).name == "train.pt.lock"


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


def test_prepare_shared_inputs_builds_the_dataset_and_both_caches_once(tmp_path):
    from mvlip_utils.train.experiment import cache_path, prepare_shared_inputs
    from mvlip_utils.settings.profiles import get_config

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
