"""The study's one timing method and the measurements built on it.

Warm up, synchronise, time many steps, report the median and spread with every condition that produced it
(timm's ``benchmark.py`` habit); the look-up of the records in benchmark.json that chapters and verdicts read."""
from __future__ import annotations

import gc
import math
import time
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..settings.precision import precision_context
from ..settings.precision import autocast_region as _autocast
from .flops import utilisation_fields
from ..train.provenance import device_description

PAPER, BEST = "paper's conditions", "best: bf16, channels_last"


def benchmark_record(entry: Mapping[str, Any], **match: Any) -> dict | None:
    """The first record of ``entry["benchmark"]`` (a DataFrame) whose fields equal ``match``, or None."""
    rows = entry.get("benchmark")
    if rows is None or not {"kind", *match} <= set(rows):
        return None
    rows = rows[(rows[list(match)] == pd.Series(match)).all(axis=1)]
    return None if rows.empty else rows.iloc[0].to_dict()


def benchmark_rate(entry: Mapping[str, Any], **match: Any) -> float:
    """The images/s of ``benchmark_record(entry, **match)``; NaN when none."""
    record = benchmark_record(entry, **match)
    return float(record["images_per_s"]) if record and record.get("images_per_s") is not None else math.nan


def _sync(dev: torch.device | None) -> None:
    if dev is not None and dev.type == "cuda":
        torch.cuda.synchronize(dev)


def is_oom_error(exc: BaseException) -> bool:
    """True for torch.cuda.OutOfMemoryError and allocator 'out of memory' errors (CUDA or CPU)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    msg = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in msg or "not enough memory" in msg)


def free_memory(dev: torch.device | None = None) -> None:
    """Collect garbage and return cached CUDA blocks (between measurements)."""
    gc.collect()
    if torch.cuda.is_available() and (dev is None or dev.type == "cuda"):
        torch.cuda.empty_cache()


def time_callable(fn: Callable[[], Any], device="cpu", warmup: int = 5, repeats: int = 20) -> np.ndarray:
    """Seconds of each of ``repeats`` calls of ``fn()`` after ``warmup`` untimed ones: CUDA events on CUDA (device
    time, launch gaps included), else ``perf_counter``."""
    dev = torch.device(device)
    for _ in range(warmup):
        fn()
    _sync(dev)
    if dev.type != "cuda":
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return np.asarray(times)
    with torch.cuda.device(dev):
        pairs = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize(dev)
        return np.asarray([s.elapsed_time(e) / 1000.0 for s, e in pairs])


def make_step(module: nn.Module, batch_size: int, image_size: int, precision: str = "fp32", mode: str = "inference",
              device="cpu", channels_last: bool = False, *, lr: float = 1e-4, weight_decay: float = 0.01,
              fused: bool = False):
    """(step, optimizer): ``step()`` runs one inference forward or training step (forward, float32 loss, backward,
    AdamW) of ``module`` on a fixed random batch; optimizer None for inference. Call under ``precision_context``."""
    dev = torch.device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    module.to(device=dev, memory_format=fmt)
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn((batch_size, 3, image_size, image_size), generator=gen, device=dev)
    x = x.contiguous(memory_format=fmt)
    if mode == "train":
        module.train()
        from ..train.experiment import make_adamw  # open_clip's import only where a step trains

        opt = make_adamw(module.parameters(), lr, weight_decay, fused)

        def train_step():
            opt.zero_grad(set_to_none=True)
            with _autocast(precision, dev):
                out = module(x)
            loss = out.float().pow(2).mean()
            loss.backward()
            opt.step()
            return loss
        return train_step, opt
    module.eval()

    def inference_step():
        with torch.no_grad(), _autocast(precision, dev):
            return module(x)
    return inference_step, None


def model_throughput(module: nn.Module, batch_size: int, image_size: int = 224, precision: str = "fp32",
                     mode: str = "inference", device="cpu", channels_last: bool = False, warmup: int = 5,
                     repeats: int = 20, *, lr: float = 1e-4, weight_decay: float = 0.01, fused: bool = False,
                     flops_per_image: float | None = None) -> dict:
    """Images/s of ``module`` alone on random inputs (``make_step``'s step), median and 10th-90th percentiles,
    with every condition recorded. Errors (OOM) propagate. ``peak_memory_bytes`` (CUDA): weights, optimizer state
    and activations. ``flops_per_image`` adds ``tflops_per_s`` and ``utilisation`` of the GPU's peak."""
    dev = torch.device(device)
    step, opt = make_step(module, batch_size, image_size, precision, mode, dev, channels_last,
                          lr=lr, weight_decay=weight_decay, fused=fused)
    saved_bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = dev.type == "cuda"
    try:
        with precision_context(precision, dev, autocast=False):  # TF32 mode for forward and backward
            free_memory(dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            times = time_callable(step, dev, warmup=warmup, repeats=repeats)
            peak = int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None
    finally:
        torch.backends.cudnn.benchmark = saved_bench
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        step = opt = None  # the step closure holds the optimizer, its state and the batch
        free_memory(dev)

    p10, med, p90 = np.percentile(times, [10, 50, 90])
    name = device_description(dev)
    out = dict(
        images_per_s=batch_size / med, images_per_s_p10=batch_size / p90, images_per_s_p90=batch_size / p10,
        seconds_per_image=med / batch_size, repeats=repeats, warmup=warmup, batch_size=batch_size,
        image_size=image_size, precision=precision, mode=mode,
        optimizer=("fused" if fused else "foreach") if mode == "train" else None, device_name=name,
        channels_last=bool(channels_last), peak_memory_bytes=peak)
    out.update(utilisation_fields(flops_per_image, out["images_per_s"], name, precision))
    return out


def eval_loop_throughput(evaluate_fn: Callable[[], dict], device=None, warmup: int = 0, repeats: int = 1) -> dict:
    """The paper's Table 2 method: ``n_val / wall time`` of the whole evaluation loop ``evaluate_fn()`` (which
    reports ``n_val``), data loading included; median over ``repeats``."""
    dev = torch.device(device) if device is not None else None
    for _ in range(warmup):
        evaluate_fn()
    walls = []
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        n_images = evaluate_fn()["n_val"]
        _sync(dev)
        walls.append(time.perf_counter() - t0)
    wall = float(np.median(walls))
    return dict(n_images=n_images, wall_time_s=wall, images_per_s=n_images / wall,
                images_per_s_min=n_images / max(walls), images_per_s_max=n_images / min(walls), repeats=repeats,
                warmup=warmup)


def interleaved_ratio(step_a: Callable[[], Any], step_b: Callable[[], Any], device="cpu", rounds: int = 5,
                      warmup: int = 3, repeats: int = 10) -> dict:
    """Time two steps in alternating rounds (a, b, a, b, ...) so drifts hit both alike; ``ratio``: median over
    rounds of a's throughput over b's (``b_s / a_s``), with its min and max."""
    a_s, b_s = np.array([[np.median(time_callable(step, device, warmup=warmup, repeats=repeats))
                          for step in (step_a, step_b)] for _ in range(rounds)]).T
    ratios = b_s / a_s
    return dict(a_median_s=float(np.median(a_s)), b_median_s=float(np.median(b_s)), ratio=float(np.median(ratios)),
                ratio_min=float(ratios.min()), ratio_max=float(ratios.max()), rounds=rounds, warmup=warmup,
                repeats=repeats)
