"""The study's one timing method and the measurements built on it.

Warm up, synchronise, time many steps, report the median and spread with every condition that produced it
(timm's ``benchmark.py`` habit). ``time_callable`` times a call; ``model_throughput`` a module alone on random
inputs; ``eval_loop_throughput`` the paper's Table 2 method; ``interleaved_ratio`` two variants in alternating rounds.
"""
from __future__ import annotations

import gc
import time
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from ..settings.precision import PRECISIONS, precision_context
from ..settings.precision import autocast_region as _autocast
from .flops import MODES, first_tensor, utilisation_fields
from ..train.experiment import make_adamw
from ..train.provenance import device_description


def _device(device) -> torch.device:
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"parameter device={device!r}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


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


def time_callable(fn: Callable[[], Any], device="cpu", warmup: int = 5, repeats: int = 20, sync: bool = True) -> dict:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed ones, in seconds. CUDA events on CUDA with
    ``sync`` (device time, launch gaps included), else ``perf_counter`` (``sync=False`` on CUDA: host side only).
    Returns dict(median_s, p10_s, p90_s, mean_s, min_s, max_s, repeats, warmup, timer, times_s)."""
    if not callable(fn):
        raise TypeError(f"parameter fn must be callable, got {type(fn).__name__}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"parameter warmup must be an int >= 0, got {warmup!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"parameter repeats must be an int >= 1, got {repeats!r}")
    dev = _device(device)
    use_events = dev.type == "cuda" and sync
    for _ in range(warmup):
        fn()
    if sync:
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
            if sync:
                _sync(dev)
            times.append(time.perf_counter() - t0)
    arr = np.asarray(times, dtype=np.float64)
    return dict(median_s=float(np.median(arr)), p10_s=float(np.percentile(arr, 10)),
                p90_s=float(np.percentile(arr, 90)), mean_s=float(arr.mean()), min_s=float(arr.min()),
                max_s=float(arr.max()), repeats=repeats, warmup=warmup,
                timer="cuda_event" if use_events else "perf_counter", times_s=[float(t) for t in arr])


def _model_name(module: nn.Module) -> str:
    for attr in ("timm_name", "encoder_name"):
        if isinstance(getattr(module, attr, None), str):
            return getattr(module, attr)
    inner = getattr(module, "_orig_mod", None)  # torch.compile wrapper
    return _model_name(inner) if inner is not None else type(module).__name__


def make_step(module: nn.Module, batch_size: int, image_size: int, precision: str = "fp32", mode: str = "inference",
              device="cpu", channels_last: bool = False, compile: bool = False, *, in_chans: int = 3,
              lr: float = 1e-4, weight_decay: float = 0.01, fused: bool = False, seed: int = 0,
              compile_kwargs: Mapping | None = None):
    """(step, optimizer): ``step()`` runs one inference forward or training step (forward, float32 loss, backward,
    AdamW) of ``module`` on a fixed random batch; optimizer None for inference. Call under ``precision_context``."""
    dev = _device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    module.to(device=dev, memory_format=fmt)
    gen = torch.Generator(device=dev).manual_seed(seed)
    x = torch.randn((batch_size, in_chans, image_size, image_size), generator=gen, device=dev)
    x = x.contiguous(memory_format=fmt)
    run_module = torch.compile(module, **dict(compile_kwargs or {})) if compile else module
    if mode == "train":
        module.train()
        opt = make_adamw(module.parameters(), lr, weight_decay, fused)

        def train_step():
            opt.zero_grad(set_to_none=True)
            with _autocast(precision, dev):
                out = first_tensor(run_module(x))
            loss = out.float().pow(2).mean()
            loss.backward()
            opt.step()
            return loss
        return train_step, opt
    module.eval()

    def inference_step():
        with torch.no_grad(), _autocast(precision, dev):
            return run_module(x)
    return inference_step, None


def model_throughput(module: nn.Module, batch_size: int, image_size: int = 224, precision: str = "fp32",
                     mode: str = "inference", device="cpu", channels_last: bool = False,
                     compile: bool = False, warmup: int = 5, repeats: int = 20, *, in_chans: int = 3,
                     lr: float = 1e-4, weight_decay: float = 0.01, fused: bool = False,
                     cudnn_benchmark: bool = True, seed: int = 0, compile_kwargs: Mapping | None = None,
                     flops_per_image: float | None = None) -> dict:
    """Images/s of ``module`` alone on random inputs, with every condition recorded.

    ``mode``: inference (eval, no_grad, forward) or train (forward, float32 mean-square loss, backward, AdamW
    step; the weights change). ``compile`` compiles in the warm-up (``warmup`` >= 1; ``first_call_s``).
    Errors (compilation, OOM) propagate. ``peak_memory_bytes`` (CUDA): weights, optimizer state and activations.
    ``flops_per_image`` adds ``tflops_per_s`` and ``utilisation`` of the GPU's peak (None where unknown)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"parameter module must be a torch.nn.Module, got {type(module).__name__}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"parameter batch_size must be a positive int, got {batch_size!r}")
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"parameter image_size must be a positive int, got {image_size!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"parameter precision={precision!r} is not one of {list(PRECISIONS)}")
    if mode not in MODES:
        raise ValueError(f"parameter mode={mode!r} is not one of {list(MODES)}")
    if compile and warmup < 1:
        raise ValueError("parameter warmup must be >= 1 with compile=True (compilation happens in warm-up)")
    dev = _device(device)
    step, opt = make_step(module, batch_size, image_size, precision, mode, dev, channels_last, compile,
                          in_chans=in_chans, lr=lr, weight_decay=weight_decay, fused=fused, seed=seed,
                          compile_kwargs=compile_kwargs)
    saved_bench = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark) and dev.type == "cuda"
    try:
        with precision_context(precision, dev, autocast=False):  # TF32 mode for forward and backward
            free_memory(dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats(dev)
            first_call_s = None
            if warmup >= 1:
                _sync(dev)
                t0 = time.perf_counter()
                step()
                _sync(dev)
                first_call_s = time.perf_counter() - t0
            timing = time_callable(step, dev, warmup=max(0, warmup - 1), repeats=repeats, sync=True)
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
        batch_size=batch_size, image_size=image_size, pixels=image_size * image_size, precision=precision, mode=mode,
        optimizer=("fused" if fused else "foreach") if mode == "train" else None, device=str(dev), device_name=name,
        channels_last=bool(channels_last), compile=bool(compile),
        cudnn_benchmark=bool(cudnn_benchmark) and dev.type == "cuda", peak_memory_bytes=peak,
        model_bytes=int(sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])),
        model=_model_name(module), n_params=int(sum(p.numel() for p in module.parameters())),
        first_call_s=first_call_s, torch_version=torch.__version__)
    out.update(utilisation_fields(flops_per_image, out["images_per_s"], name, precision))
    return out


def eval_loop_throughput(evaluate_fn: Callable[[], Any], n_images: int | None = None, device=None,
                         warmup: int = 0, repeats: int = 1) -> dict:
    """The paper's Table 2 method: ``n_images / wall time`` of the whole evaluation loop ``evaluate_fn()``,
    data loading included; median over ``repeats``. ``n_images`` defaults to the result's ``n_images``, ``n_val``
    or ``len(predictions)``; a result's own ``wall_time_s`` is kept as ``inner_wall_time_s``."""
    if not callable(evaluate_fn):
        raise TypeError(f"parameter evaluate_fn must be callable, got {type(evaluate_fn).__name__}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"parameter repeats must be an int >= 1, got {repeats!r}")
    dev = _device(device) if device is not None else None
    for _ in range(warmup):
        evaluate_fn()
    walls, result = [], None
    for _ in range(repeats):
        _sync(dev)
        t0 = time.perf_counter()
        result = evaluate_fn()
        _sync(dev)
        walls.append(time.perf_counter() - t0)
    if n_images is None and isinstance(result, Mapping):
        for key in ("n_images", "n_val"):
            if isinstance(result.get(key), (int, np.integer)):
                n_images = int(result[key])
                break
        else:
            if result.get("predictions") is not None:
                n_images = len(result["predictions"])
    if not isinstance(n_images, (int, np.integer)) or n_images < 1:
        raise ValueError(f"parameter n_images must be a positive int (or reported by evaluate_fn), got {n_images!r}")
    wall = float(np.median(walls))
    out = dict(n_images=int(n_images), wall_time_s=wall, images_per_s=n_images / wall,
               images_per_s_min=n_images / max(walls), images_per_s_max=n_images / min(walls), wall_times_s=walls,
               repeats=repeats, warmup=warmup,
               method="n_images / wall time of the whole evaluation loop (data loading included)")
    if isinstance(result, Mapping) and isinstance(result.get("wall_time_s"), (int, float)):
        out["inner_wall_time_s"] = float(result["wall_time_s"])
        out["inner_images_per_s"] = n_images / float(result["wall_time_s"]) if result["wall_time_s"] else None
    return out


def interleaved_ratio(step_a: Callable[[], Any], step_b: Callable[[], Any], device="cpu", rounds: int = 5,
                      warmup: int = 3, repeats: int = 10) -> dict:
    """Time two steps in alternating rounds (a, b, a, b, ...) so drifts hit both alike; ``ratio``: median over
    rounds of a's throughput over b's (``b_s / a_s``), with its min and max."""
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"parameter rounds must be an int >= 1, got {rounds!r}")
    a_s, b_s = [], []
    for _ in range(rounds):
        a_s.append(time_callable(step_a, device, warmup=warmup, repeats=repeats)["median_s"])
        b_s.append(time_callable(step_b, device, warmup=warmup, repeats=repeats)["median_s"])
    ratios = [b / a for a, b in zip(a_s, b_s)]
    return dict(a_median_s=float(np.median(a_s)), b_median_s=float(np.median(b_s)), a_round_s=a_s, b_round_s=b_s,
                ratio=float(np.median(ratios)), ratio_min=float(min(ratios)), ratio_max=float(max(ratios)),
                rounds=rounds, warmup=warmup, repeats=repeats)
