"""Where a training step's time goes: ``torch.profiler`` over a few steps of the real training loop, read back
into per-step figures (``summarize_trace``)."""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
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


def summarize_trace(trace: dict, phases: dict[str, str]) -> dict[str, Any]:
    """Per-step figures (ms) of a torch.profiler Chrome trace whose phases are record_function ranges named by
    ``phases`` (role -> name). A step runs from one ``forward`` to the next (data wait included; the first, the
    workers' start, is left out): host time per phase and in the data wait; on a GPU busy (union of kernels,
    copies, memsets) and idle time, kernel time by the phase that launched it, kernels per step, top kernels."""
    events = pd.DataFrame([e for e in trace.get("traceEvents", []) if e.get("ph") == "X"],
                          columns=["name", "cat", "ts", "dur", "args"])
    events = events.assign(ts=events.ts.astype(float), dur=events.dur.astype(float).fillna(0.0),
                           role=events.name.map({name: role for role, name in phases.items()}),
                           correlation=[a.get("correlation") if isinstance(a, dict) else None for a in events.args])
    annotations = events[events.cat == "user_annotation"]
    phase_events = annotations[annotations.role.notna()]
    forwards = sorted(phase_events.ts[phase_events.role == "forward"])
    if len(forwards) < 2:
        raise ValueError(f"the trace holds {len(forwards)} training step(s) named {phases['forward']!r}; "
                         "at least two are needed (one step is measured from one forward to the next)")
    if len(forwards) == 2:  # one step: measured, workers' start and all
        start, end, n = forwards[0], forwards[1], 1
    else:  # the first step waits for the loader's workers to start
        start, end, n = forwards[1], forwards[-1], len(forwards) - 2
    span = end - start
    measured = annotations[(annotations.ts >= start) & (annotations.ts < end)]
    host = measured.groupby("role").dur.sum()
    summary: dict[str, Any] = {
        "steps": n, "step_ms": span / n / 1e3,
        "data_wait_ms": measured.dur[measured.name.str.startswith(DATA_WAIT_PREFIX, na=False)].sum() / n / 1e3,
        **{f"host_{role}_ms": host.get(role, 0.0) / n / 1e3 for role in phases},
    }

    gpu = events[events.cat.isin(GPU_CATEGORIES)]
    if gpu.empty:  # on the CPU: the host's figures only
        return {**summary, "gpu_busy_ms": None, "top_kernels": []}
    # the union of the GPU's intervals within the steps: each interval adds what reaches past all earlier ones
    clipped = pd.DataFrame({"s": gpu.ts.clip(start, end), "e": (gpu.ts + gpu.dur).clip(start, end)}).sort_values("s")
    earlier = clipped.e.cummax().shift(fill_value=-math.inf)
    busy = (clipped.e - clipped.s.where(clipped.s > earlier, earlier)).clip(lower=0).sum()
    launches = events[events.cat.isin(LAUNCH_CATEGORIES) & events.correlation.notna()]
    launched = gpu.assign(launched=gpu.correlation.map(dict(zip(launches.correlation, launches.ts))))
    launched = launched[(launched.launched >= start) & (launched.launched < end)]  # in the measured steps
    ranges = phase_events[["ts", "dur", "role"]].rename(columns={"ts": "range_start", "role": "phase"})
    launched = pd.merge_asof(launched[["name", "cat", "dur", "launched"]].sort_values("launched"),
                             ranges.sort_values("range_start"), left_on="launched", right_on="range_start",
                             suffixes=("", "_range"))  # the phase range that launched it, if any
    in_range = launched.launched <= launched.range_start + launched.dur_range
    by_phase = launched.dur.groupby(launched.phase.where(in_range, "other")).sum()
    kernels = launched[launched.cat == "kernel"].groupby("name").dur.agg(["size", "sum"])
    top = kernels.sort_values("sum", ascending=False, kind="stable").head(TOP_KERNELS)
    summary.update(
        gpu_busy_ms=busy / n / 1e3, gpu_idle_ms=(span - busy) / n / 1e3, gpu_busy_fraction=busy / span,
        kernels_per_step=kernels["size"].sum() / n,
        **{f"gpu_{role}_ms": by_phase.get(role, 0.0) / n / 1e3 for role in phases},
        top_kernels=[{"kernel": name[:160], "calls_per_step": calls / n, "ms_per_step": us / n / 1e3,
                      "share_of_kernel_time": us / (kernels["sum"].sum() or 1.0)}
                     for name, calls, us in top.itertuples()],
    )
    return summary
