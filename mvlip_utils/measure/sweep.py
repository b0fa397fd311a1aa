"""Cost against resolution: a tower timed at several pixel counts (``resolution_sweep``) and the fitted exponent
of a per-image cost against the pixel count (``fit_growth_exponent``: 1 linear, 2 quadratic)."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..settings.precision import autocast_region as _autocast
from ..settings.precision import precision_context
from ..train.provenance import device_description
from .benchmark import free_memory, is_oom_error, model_throughput
from .flops import flops_per_image


def scaled_batch_size(base_batch: int, base_resolution: int, resolution: int, min_batch: int = 1) -> int:
    """Keep pixels per batch about constant: ``base_batch * (base_resolution / resolution)**2``, >= min_batch."""
    return max(int(min_batch), int(round(base_batch * (base_resolution / resolution) ** 2)))


def marginal_memory_per_image(module: nn.Module, image_size: int, batch_size: int, precision: str = "bf16",
                              device="cuda", channels_last: bool = False) -> float:
    """Extra peak bytes per extra image in CUDA inference, ``(peak(n) - peak(1)) / (n - 1)``, n = max(2, batch):
    constant terms (weights, autocast copies, workspaces) cancel."""
    dev = torch.device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    module.to(device=dev, memory_format=fmt).eval()
    peaks = {}
    n = max(2, batch_size)
    with precision_context(precision, dev, autocast=False):
        for b in (1, n):
            x = torch.randn((b, 3, image_size, image_size), device=dev).contiguous(memory_format=fmt)
            free_memory(dev)
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            with torch.no_grad(), _autocast(precision, dev):
                module(x)
            torch.cuda.synchronize(dev)
            peaks[b] = torch.cuda.max_memory_allocated(dev) - base
            del x
    return (peaks[n] - peaks[1]) / (n - 1)


TIMED = ("images_per_s", "seconds_per_image", "peak_memory_bytes")


def resolution_sweep(factory: Callable[[int], nn.Module], resolutions: Iterable[int],
                     batch_size: Callable[[int], int], precision: str = "bf16", device="cpu",
                     channels_last: bool = False, warmup: int = 3, repeats: int = 10) -> pd.DataFrame:
    """Inference ``model_throughput`` of ``factory(resolution)`` at ``batch_size(resolution)``, one row per
    resolution, with the FLOPs per image and, on CUDA, the marginal memory per image. A resolution that fails
    (OOM, a size the architecture cannot take) gets NaN speeds, its ``error`` and ``oom``."""
    dev = torch.device(device)
    rows = []
    for res in resolutions:
        batch = batch_size(res)
        row: dict[str, Any] = dict(resolution=res, pixels=res * res, batch_size=batch, **dict.fromkeys(TIMED, math.nan),
                                   marginal_memory_per_image_bytes=None, memory_probe_error=None, flops_per_image=None,
                                   oom=False, error=None, precision=precision, device_name=device_description(dev),
                                   channels_last=channels_last)
        try:
            module = factory(res)
            r = model_throughput(module, batch, image_size=res, precision=precision, device=dev,
                                 channels_last=channels_last, warmup=warmup, repeats=repeats)
            row.update({k: r[k] for k in TIMED})
            row["flops_per_image"] = flops_per_image(module, res, "inference", dev, batch_size=1)
            if dev.type == "cuda":
                try:
                    row["marginal_memory_per_image_bytes"] = marginal_memory_per_image(
                        module, res, batch, precision, dev, channels_last)
                except Exception as exc:  # noqa: BLE001 - a probe failure must not lose the timing
                    row["memory_probe_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        except Exception as exc:  # noqa: BLE001 - a failing resolution is a result, not the end
            row["oom"] = is_oom_error(exc)
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        finally:
            module = None  # noqa: F841 - drop the per-resolution model before the next one
        free_memory(dev)  # outside the except block, so the traceback's tensors are gone too
        rows.append(row)
    return pd.DataFrame(rows)


def fit_growth_exponent(pixels: Sequence[float], cost: Sequence[float]) -> float:
    """Least-squares slope ``b`` of log(cost) against log(pixels), cost ~ a * pixels**b, for a per-image cost:
    ~1 linear (convolutions, MLPs, windowed attention, a scan), ~2 quadratic (global attention where it dominates).
    Non-finite or non-positive points are dropped; ValueError unless two distinct pixel counts remain."""
    p = np.asarray(pixels, dtype=np.float64)
    c = np.asarray(cost, dtype=np.float64)
    keep = np.isfinite(p) & np.isfinite(c) & (p > 0) & (c > 0)
    if len(np.unique(p[keep])) < 2:
        raise ValueError("parameters pixels/cost: need at least two distinct positive finite points to fit")
    slope, _ = np.polyfit(np.log(p[keep]), np.log(c[keep]), 1)
    return float(slope)
