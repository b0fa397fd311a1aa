"""The study's one timing method and the measurements built on it.

Warm up, synchronise, time many steps, report the median and spread with every condition that produced it
(timm's ``benchmark.py`` habit). ``time_callable`` times a call; ``model_throughput`` a module alone on random
inputs; ``eval_loop_throughput`` the paper's Table 2 method; ``interleaved_ratio`` two variants in alternating rounds.
"""
from __future__ import annotations

import gc
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..settings.precision import precision_context
from ..settings.precision import autocast_region as _autocast
from .flops import utilisation_fields
from ..train.experiment import make_adamw
from ..train.provenance import device_description


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


def time_callable(fn: Callable[[], Any], device="cpu", warmup: int = 5, repeats: int = 20) -> dict:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones, in seconds: CUDA events on CUDA
    (device time, launch gaps included), else ``perf_counter``.
    Returns dict(median_s, p10_s, p90_s, mean_s, min_s, max_s, repeats, warmup, timer, times_s)."""
    dev = torch.device(device)
    use_events = dev.type == "cuda"
    for _ in range(warmup):
        fn()
    _sync(dev)
    times: list[float] = []
    if use_events:
        with torch.cuda.device(dev):
            pairs = []
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                pairs.append((start, end))
            torch.cuda.synchronize(dev)
            times = [s.elapsed_time(e) / 1000.0 for s, e in pairs]
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    arr = np.asarray(times, dtype=np.float64)
    return dict(median_s=float(np.median(arr)), p10_s=float(np.percentile(arr, 10)),
                p90_s=float(np.percentile(arr, 90)), mean_s=float(arr.mean()), min_s=float(arr.min()),
                max_s=float(arr.max()), repeats=repeats, warmup=warmup,
                timer="cuda_event" if use_events else "perf_counter", times_s=[float(t) for t in arr])


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
    """Images/s of ``module`` alone on random inputs, with every condition recorded.

    ``mode``: inference (eval, no_grad, forward) or train (forward, float32 mean-square loss, backward, AdamW
    step; the weights change). Errors (OOM) propagate. ``peak_memory_bytes`` (CUDA): weights, optimizer state
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
            timing = time_callable(step, dev, warmup=warmup, repeats=repeats)
            peak = int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda" else None
    finally:
        torch.backends.cudnn.benchmark = saved_bench
        if opt is not None:
            opt.zero_grad(set_to_none=True)
        step = opt = None  # the step closure holds the optimizer, its state and the batch
        free_memory(dev)

    med = timing["median_s"]
    name = device_description(dev)
    out = dict(
        images_per_s=batch_size / med, images_per_s_p10=batch_size / timing["p90_s"],
        images_per_s_p90=batch_size / timing["p10_s"], seconds_per_image=med / batch_size, median_s=med,
        p10_s=timing["p10_s"], p90_s=timing["p90_s"], repeats=repeats, warmup=warmup, timer=timing["timer"],
        batch_size=batch_size, image_size=image_size, precision=precision, mode=mode,
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
                images_per_s_min=n_images / max(walls), images_per_s_max=n_images / min(walls), wall_times_s=walls,
                repeats=repeats, warmup=warmup,
                method="n_images / wall time of the whole evaluation loop (data loading included)")


def interleaved_ratio(step_a: Callable[[], Any], step_b: Callable[[], Any], device="cpu", rounds: int = 5,
                      warmup: int = 3, repeats: int = 10) -> dict:
    """Time two steps in alternating rounds (a, b, a, b, ...) so drifts hit both alike; ``ratio``: median over
    rounds of a's throughput over b's (``b_s / a_s``), with its min and max."""
    a_s, b_s = [], []
    for _ in range(rounds):
        a_s.append(time_callable(step_a, device, warmup=warmup, repeats=repeats)["median_s"])
        b_s.append(time_callable(step_b, device, warmup=warmup, repeats=repeats)["median_s"])
    ratios = [b / a for a, b in zip(a_s, b_s)]
    return dict(a_median_s=float(np.median(a_s)), b_median_s=float(np.median(b_s)), a_round_s=a_s, b_round_s=b_s,
                ratio=float(np.median(ratios)), ratio_min=float(min(ratios)), ratio_max=float(max(ratios)),
                rounds=rounds, warmup=warmup, repeats=repeats)
