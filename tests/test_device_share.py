"""Chains sharing a device: --gpus auto, the line that tells the user, and
the timing lock that makes the benchmark chapters (and step checks) of chains on one GPU run one at a time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mvlip_utils.train import device_share
from mvlip_utils.study import runner as study

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("count, chains, devices", [(0, 3, None), (1, 3, None), (2, 3, ["0", "1", "0"]),
                                                    (3, 3, ["0", "1", "2"]), (4, 3, ["0", "1", "2"]),
                                                    (2, 1, ["0"])])
def test_auto_is_one_chain_per_visible_gpu_shared_round_robin(monkeypatch, count, chains, devices):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    assert device_share.auto_devices(chains) == devices
    assert study.gpus_argument("auto", chains) == devices
    assert study.gpus_argument("auto", chains, encoder_steps_only=True) is None  # a chain never fans out again
    assert study.gpus_argument("none", chains) is None and study.gpus_argument("0,0,1", 3) == ["0", "0", "1"]


def test_the_cli_default_is_auto(monkeypatch):
    seen = {}
    monkeypatch.setattr(study, "run_study", lambda *a, **k: seen.update(k))
    monkeypatch.setattr(device_share, "auto_devices", lambda n: [str(i % 2) for i in range(n)])
    assert study.main(["--encoders", "mambavision", "swin", "vit", "--no-book"]) == 0
    assert seen["gpus"] == ["0", "1", "0"]


def test_a_shared_gpu_is_named_with_what_runs_one_at_a_time(tmp_path):
    encoders, devices = ["mambavision", "swin", "vit"], ["0", "0", "1"]
    assert device_share.shared_devices(encoders, devices) == {"0": ["mambavision", "swin"]}
    lines = device_share.sharing_lines(encoders, devices)
    assert lines == ["GPU 0 is shared by mambavision and swin: their benchmark chapters (and the training chapters' "
                     "step checks) run one at a time; their training epochs overlap"]
    assert device_share.sharing_lines(encoders, ["0", "1", "2"]) == []
    env = device_share.chain_env("swin", encoders, devices, tmp_path)
    assert env == {device_share.LOCK_ENV: str(tmp_path / "device-0.lock"), device_share.SHARED_ENV: "mambavision"}
    assert device_share.chain_env("vit", encoders, devices, tmp_path)[device_share.SHARED_ENV] == ""


HOLD = """
import json, sys, time
from mvlip_utils.train import device_share
with device_share.timing_lock():
    start = time.time()
    time.sleep(1.5)
    print(json.dumps([start, time.time()]))
"""


def _hold_at_once(envs: list[dict]) -> list[list[float]]:
    procs = [subprocess.Popen([sys.executable, "-c", HOLD], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT), **env}) for env in envs]
    return [json.loads(p.communicate(timeout=120)[0]) for p in procs]


def test_chains_on_one_device_time_one_at_a_time(tmp_path):
    encoders, devices = ["mambavision", "swin", "vit"], ["0", "0", "0"]
    spans = sorted(_hold_at_once([device_share.chain_env(e, encoders, devices, tmp_path) for e in encoders]))
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end  # no two hold the device at once
    # where the chain's runner holds the lock, the notebook it starts does not wait for it (no deadlock)
    env = {**device_share.chain_env("swin", encoders, devices, tmp_path), device_share.HELD_ENV: "1"}
    from filelock import FileLock

    with FileLock(env[device_share.LOCK_ENV]):
        assert len(_hold_at_once([env])) == 1


BENCH_TIMES = """
import json, pathlib, time
start = time.time()
time.sleep(2)
pathlib.Path('bench-times').mkdir(exist_ok=True)
(pathlib.Path('bench-times') / f'{encoder}.json').write_text(json.dumps([start, time.time()]))
"""


@pytest.mark.slow
def test_the_study_runs_the_benchmark_chapters_of_a_shared_device_one_at_a_time(tmp_path, monkeypatch):
    from conftest import fake_study

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the device locks of this test only
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    fake_study(tmp_path, setup="pass", benchmark=BENCH_TIMES)
    lines: list[str] = []
    report = study.run_study("smoke", ["swin", "vit"], book=False, root=tmp_path, log=lines.append, gpus=["cpu", "cpu"])
    assert report["failed"] == []
    assert "[study] The CPU is shared by swin and vit: their benchmark chapters" in "\n".join(lines)
    spans = sorted(json.loads(p.read_text()) for p in (tmp_path / "bench-times").glob("*.json"))
    assert len(spans) == 2 and spans[1][0] >= spans[0][1]
