"""Where a training step's time goes: ``torch.profiler`` over a few steps of the real training loop, read back
into per-step figures (``summarize_trace``)."""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import gzip
import json
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from ..train import loop as train

DATA_WAIT_PREFIX = "enumerate(DataLoader)#"  # the DataLoader's own record_function around each __next__
GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
LAUNCH_CATEGORIES = ("cuda_runtime", "cuda_driver")
TOP_KERNELS = 12


def profile_training_epoch(experiment, optimizer, scheduler, loss_fn, epoch: int, steps: int,
                           trace_path: str | Path | None = None) -> dict[str, Any]:
    """Train one epoch of ``steps`` + 2 batches under torch.profiler and summarise its last ``steps`` steps
    (``summarize_trace``); the Chrome trace is kept gzipped at ``trace_path`` when given."""
    batch = experiment.config.batch_size
    images = (steps + 2) * batch  # the first step (the workers' start) and the last (no next forward) are not measured
    if len(experiment.train_set) < images:
        raise ValueError(f"parameter steps={steps} needs {images} training images ({steps} + 2 batches of "
                         f"{batch}); the set has {len(experiment.train_set)}")
    short = dataclasses.replace(experiment, train_set=torch.utils.data.Subset(experiment.train_set, range(images)))
    on_gpu = str(experiment.device).startswith("cuda")
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if on_gpu else [ProfilerActivity.CPU]
    with _native_stderr_silenced(), profile(activities=activities) as prof:
        train.train_one_epoch(short, optimizer, scheduler, loss_fn, epoch, progress=False)
        if on_gpu:
            torch.cuda.synchronize(experiment.device)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        raw = path.read_bytes()
    if trace_path is not None:
        Path(trace_path).parent.mkdir(parents=True, exist_ok=True)
        Path(trace_path).write_bytes(gzip.compress(raw, compresslevel=6))
    summary = summarize_trace(json.loads(raw), train.PHASES)
    summary.update(batch_size=batch, images_per_s=batch / summary["step_ms"] * 1e3 if summary["step_ms"] else None,
                   device=str(experiment.device))
    return summary


@contextlib.contextmanager
def _native_stderr_silenced():
    """File descriptor 2 to /dev/null meanwhile: the profiler's native library logs there (a notebook's output)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _union_within(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """Length of the union of ``intervals`` (sorted by start) clipped to [start, end]."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in intervals:
        s, e = max(s, start), min(e, end)
        if e <= s:
            continue
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


def summarize_trace(trace: dict, phases: dict[str, str]) -> dict[str, Any]:
    """Per-step figures (ms) of a torch.profiler Chrome trace whose phases are record_function ranges named by
    ``phases`` (role -> name). A step runs from one ``forward`` to the next (data wait included; the first, the
    workers' start, is left out): host time per phase and in the data wait; on a GPU busy (union of kernels,
    copies, memsets) and idle time, kernel time by the phase that launched it, kernels per step, top kernels."""
    events = [e for e in trace.get("traceEvents", []) if e.get("ph") == "X"]
    names = {name: role for role, name in phases.items()}
    annotations = [e for e in events if e.get("cat") == "user_annotation"]
    phase_events = [e for e in annotations if e["name"] in names]
    forwards = sorted(e["ts"] for e in phase_events if names[e["name"]] == "forward")
    if len(forwards) < 2:
        raise ValueError(f"the trace holds {len(forwards)} training step(s) named {phases['forward']!r}; "
                         "at least two are needed (one step is measured from one forward to the next)")
    if len(forwards) == 2:  # one step: measured, workers' start and all
        start, end, n = forwards[0], forwards[1], 1
    else:  # the first step waits for the loader's workers to start
        start, end, n = forwards[1], forwards[-1], len(forwards) - 2
    span = end - start
    measured = [e for e in annotations if start <= e["ts"] < end]
    host = {role: 0.0 for role in phases}
    for e in (e for e in measured if e["name"] in names):
        host[names[e["name"]]] += e.get("dur", 0.0)
    data_wait = sum(e.get("dur", 0.0) for e in measured if e["name"].startswith(DATA_WAIT_PREFIX))
    summary: dict[str, Any] = {
        "steps": n, "step_ms": span / n / 1e3, "data_wait_ms": data_wait / n / 1e3,
        **{f"host_{role}_ms": host[role] / n / 1e3 for role in phases},
    }

    gpu = [e for e in events if e.get("cat") in GPU_CATEGORIES]
    if not gpu:  # on the CPU: the host's figures only
        return {**summary, "gpu_busy_ms": None, "top_kernels": []}
    busy = _union_within(sorted((e["ts"], e["ts"] + e.get("dur", 0.0)) for e in gpu), start, end)
    launches = {e["args"]["correlation"]: e["ts"] for e in events
                if e.get("cat") in LAUNCH_CATEGORIES and "correlation" in e.get("args", {})}
    ranges = sorted((e["ts"], e["ts"] + e.get("dur", 0.0), names[e["name"]]) for e in phase_events)
    range_starts = [r[0] for r in ranges]
    by_phase: dict[str, float] = defaultdict(float)
    by_kernel: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    counted = 0
    for e in gpu:
        launched = launches.get(e.get("args", {}).get("correlation"))
        if launched is None or not (start <= launched < end):
            continue  # launched outside the measured steps
        i = bisect.bisect_right(range_starts, launched) - 1  # the phase range that launched it, if any
        by_phase[ranges[i][2] if i >= 0 and launched <= ranges[i][1] else "other"] += e.get("dur", 0.0)
        if e.get("cat") == "kernel":
            counted += 1
            record = by_kernel[e["name"]]
            record[0] += 1
            record[1] += e.get("dur", 0.0)
    total_gpu = sum(v[1] for v in by_kernel.values()) or 1.0
    top = sorted(by_kernel.items(), key=lambda kv: -kv[1][1])[:TOP_KERNELS]
    summary.update(
        gpu_busy_ms=busy / n / 1e3, gpu_idle_ms=(span - busy) / n / 1e3, gpu_busy_fraction=busy / span,
        kernels_per_step=counted / n,
        **{f"gpu_{role}_ms": by_phase.get(role, 0.0) / n / 1e3 for role in phases},
        top_kernels=[{"kernel": name[:160], "calls_per_step": calls / n, "ms_per_step": us / n / 1e3,
                      "share_of_kernel_time": us / total_gpu} for name, (calls, us) in top],
    )
    return summary
