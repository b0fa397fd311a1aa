"""Cost against resolution: a tower timed at several pixel counts (``resolution_sweep``) and the fitted exponent
of a per-image cost against the pixel count (``fit_growth_exponent``: 1 linear, 2 quadratic)."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..settings.precision import autocast_region as _autocast
from ..settings.precision import precision_context
from ..train.provenance import device_description
from .benchmark import _device, free_memory, is_oom_error, model_throughput
from .flops import flops_per_image


def scaled_batch_size(base_batch: int, base_resolution: int, resolution: int, min_batch: int = 1) -> int:
    """Keep pixels per batch about constant: ``base_batch * (base_resolution / resolution)**2``, >= min_batch."""
    return max(int(min_batch), int(round(base_batch * (base_resolution / resolution) ** 2)))


def _batch_for(batch_size, resolution: int) -> int:
    if callable(batch_size):
        b = batch_size(resolution)
    elif isinstance(batch_size, Mapping):
        if resolution not in batch_size:
            raise ValueError(f"parameter batch_size has no entry for resolution {resolution}")
        b = batch_size[resolution]
    else:
        b = batch_size
    if not isinstance(b, (int, np.integer)) or b < 1:
        raise ValueError(f"parameter batch_size gave {b!r} for resolution {resolution}; expected a positive int")
    return int(b)


def marginal_memory_per_image(module: nn.Module, image_size: int, batch_size: int, precision: str = "bf16",
                              device="cuda", channels_last: bool = False, in_chans: int = 3) -> float | None:
    """Extra peak bytes per extra image in CUDA inference, ``(peak(n) - peak(1)) / (n - 1)``, n = max(2, batch):
    constant terms (weights, autocast copies, workspaces) cancel. None on the CPU."""
    dev = _device(device)
    if dev.type != "cuda":
        return None
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    module.to(device=dev, memory_format=fmt).eval()
    peaks = {}
    n = max(2, int(batch_size))
    with precision_context(precision, dev, autocast=False):
        for b in (1, n):
            x = torch.randn((b, in_chans, image_size, image_size), device=dev).contiguous(memory_format=fmt)
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


def resolution_sweep(model_or_factory: nn.Module | Callable[[int], nn.Module], resolutions: Iterable[int],
                     batch_size: int | Mapping[int, int] | Callable[[int], int], precision: str = "bf16",
                     device="cpu", mode: str = "inference", channels_last: bool = False,
                     compile: bool = False, warmup: int = 3, repeats: int = 10,
                     catch_errors: bool = False, memory_probe: bool = True, count_flops: bool = True,
                     log: Callable[[str], Any] | None = None) -> pd.DataFrame:
    """``model_throughput`` at each resolution, one row each. ``model_or_factory``: a module for every resolution
    or a callable ``resolution -> module``; ``batch_size``: an int, {resolution: batch} or a callable. OOM gives
    ``oom=True`` and NaN speeds; other errors propagate unless ``catch_errors`` (recorded in ``error``)."""
    resolutions = [int(r) for r in resolutions]
    if not resolutions or any(r < 1 for r in resolutions):
        raise ValueError(f"parameter resolutions must be positive ints, got {resolutions!r}")
    if not (isinstance(model_or_factory, nn.Module) or callable(model_or_factory)):
        raise TypeError("parameter model_or_factory must be an nn.Module or a callable resolution -> module")
    dev = _device(device)
    is_factory = not isinstance(model_or_factory, nn.Module)
    rows = []
    for res in resolutions:
        batch = _batch_for(batch_size, res)
        row: dict[str, Any] = dict(resolution=res, pixels=res * res, batch_size=batch, images_per_s=math.nan,
                                   seconds_per_image=math.nan, median_s=math.nan, p10_s=math.nan, p90_s=math.nan,
                                   peak_memory_bytes=None, model_bytes=None, memory_per_image_bytes=None,
                                   marginal_memory_per_image_bytes=None, memory_probe_error=None,
                                   flops_per_image=None, oom=False, error=None, precision=precision, mode=mode,
                                   device_name=device_description(dev), channels_last=bool(channels_last),
                                   compile=bool(compile))
        failure = None
        try:
            module = model_or_factory(res) if is_factory else model_or_factory
            r = model_throughput(module, batch, image_size=res, precision=precision, mode=mode, device=dev,
                                 channels_last=channels_last, compile=compile, warmup=warmup, repeats=repeats)
            row.update({k: r[k] for k in ("images_per_s", "seconds_per_image", "median_s", "p10_s", "p90_s",
                                          "peak_memory_bytes", "model_bytes")})
            if r["peak_memory_bytes"] is not None:
                row["memory_per_image_bytes"] = (r["peak_memory_bytes"] - r["model_bytes"]) / batch
            if count_flops:
                row["flops_per_image"] = flops_per_image(module, res, "inference", dev, batch_size=1)
            if memory_probe and mode == "inference" and dev.type == "cuda":
                try:
                    row["marginal_memory_per_image_bytes"] = marginal_memory_per_image(
                        module, res, batch, precision, dev, channels_last)
                except Exception as exc:  # noqa: BLE001 - a probe failure must not lose the timing
                    row["memory_probe_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        except Exception as exc:  # noqa: BLE001 - OOM recorded; other errors only with catch_errors
            if not (is_oom_error(exc) or catch_errors):
                raise
            row["oom"] = is_oom_error(exc)
            failure = row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        finally:
            module = None  # noqa: F841 - drop the per-resolution model before the next one
        free_memory(dev)  # outside the except block, so the traceback's tensors are gone too
        rows.append(row)
        if log is not None:
            log(f"  {res:>5d} px  batch {batch:>4d}  " + (f"{row['images_per_s']:10.1f} img/s" if failure is None
                                                          else f"FAILED ({'OOM' if row['oom'] else failure})"))
    return pd.DataFrame(rows)


def fit_growth_exponent(pixels: Sequence[float], cost: Sequence[float]) -> float:
    """Least-squares slope ``b`` of log(cost) against log(pixels), cost ~ a * pixels**b, for a per-image cost:
    ~1 linear (convolutions, MLPs, windowed attention, a scan), ~2 quadratic (global attention where it dominates).
    Non-finite or non-positive points are dropped; ValueError unless two distinct pixel counts remain."""
    p = np.asarray(pixels, dtype=np.float64)
    c = np.asarray(cost, dtype=np.float64)
    if p.shape != c.shape or p.ndim != 1:
        raise ValueError(f"parameters pixels and cost must be 1-d and of equal length, got {p.shape} and {c.shape}")
    keep = np.isfinite(p) & np.isfinite(c) & (p > 0) & (c > 0)
    if len(np.unique(p[keep])) < 2:
        raise ValueError("parameters pixels/cost: need at least two distinct positive finite points to fit")
    slope, _ = np.polyfit(np.log(p[keep]), np.log(c[keep]), 1)
    return float(slope)
