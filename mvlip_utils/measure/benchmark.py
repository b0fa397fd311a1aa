"""How the study times things: one timing method, and the measurements built on it.

Follows timm's ``benchmark.py`` habit: warm up, synchronise the device, time many steps, report the
median and the spread together with every condition that produced it (batch, precision, resolution, mode,
device, memory format, optimiser, compilation, peak memory, FLOPs), so a number never travels alone.

- ``time_callable``: warm-up, then ``repeats`` timed calls; CUDA events on CUDA, ``perf_counter``
  on the CPU; median, 10th and 90th percentile.
- ``model_throughput``: images/s of a module alone on random inputs (inference, or a real training
  step: forward, scalar loss, backward, AdamW step, default or fused).
- ``eval_loop_throughput``: the paper's Table 2 method, n_images / wall time of the whole zero-shot
  evaluation loop, data loading included.
- cost against pixel count (``resolution_sweep``) and its fitted exponent are ``sweep``'s.
- ``interleaved_ratio``: two variants of one step timed in alternating rounds in one process, so drifts
  of clock and temperature hit both alike (the selective scan's cost).
- FLOPs per image and the fraction of the GPU's peak are ``flops``'.
- ``python -m mvlip_utils.measure.benchmark``: one ``model_throughput`` of a study tower from the command line
  (JSON out); also how ``benchmark_suite`` runs torch.compile in a time-limited child process.

This module does not import ``mvlip_utils.models.towers`` at import time: sweeps that need a model per resolution
take a factory callable (``lambda r: create_image_tower("swin", "paper", image_size=r)``).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..settings.precision import PRECISIONS, precision_context
from ..settings.precision import autocast_region as _autocast
from .flops import first_tensor, flops_per_image, utilisation_fields
from ..train.optim import OPTIMIZERS, make_adamw
from ..train.results import device_description

from .flops import MODES  # noqa: E402  (inference or a training step)


# ------------------------------------------------------------------------------------------ basics
def _device(device) -> torch.device:
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"parameter device={device!r}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
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


# ------------------------------------------------------------------------------------------ timing
def time_callable(fn: Callable[[], Any], device="cpu", warmup: int = 5, repeats: int = 20,
                  sync: bool = True) -> dict:
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeats`` timed calls.

    On CUDA with ``sync=True`` each call is bracketed by CUDA events on the current stream and the
    device is synchronised before the first and after the last timed call, so the times are device
    times of the queued work (launch gaps included). On the CPU (or ``sync=False``) each call is timed
    with ``time.perf_counter``; ``sync=False`` on CUDA measures only the host side (launch cost).

    Returns dict(median_s, p10_s, p90_s, mean_s, min_s, max_s, repeats, warmup, timer, times_s).
    """
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


def _model_bytes(module: nn.Module) -> int:
    return int(sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers())))


def _model_name(module: nn.Module) -> str:
    for attr in ("timm_name", "encoder_name"):
        if isinstance(getattr(module, attr, None), str):
            return getattr(module, attr)
    inner = getattr(module, "_orig_mod", None)  # torch.compile wrapper
    if inner is not None:
        return _model_name(inner)
    return type(module).__name__


# ---------------------------------------------------------------------------------- model-only speed
def make_step(module: nn.Module, batch_size: int, image_size: int, precision: str = "fp32", mode: str = "inference",
              device="cpu", channels_last: bool = False, compile: bool = False, *, in_chans: int = 3,
              lr: float = 1e-4, weight_decay: float = 0.01, optimizer: str = "foreach", seed: int = 0,
              compile_kwargs: Mapping | None = None):
    """(step, optimizer) for ``model_throughput``'s measurement: ``step()`` runs one inference forward or one
    training step (forward, float32 loss, backward, AdamW step) of ``module`` on a fixed batch of random
    images on ``device``; the optimizer is None for inference. Call it under ``precision_context``."""
    dev = _device(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    module.to(device=dev, memory_format=fmt)
    gen = torch.Generator(device=dev)
    gen.manual_seed(seed)
    x = torch.randn((batch_size, in_chans, image_size, image_size), generator=gen, device=dev)
    x = x.contiguous(memory_format=fmt)
    run_module = torch.compile(module, **dict(compile_kwargs or {})) if compile else module
    if mode == "train":
        module.train()
        opt = make_adamw(module.parameters(), lr, weight_decay, optimizer)

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
                     lr: float = 1e-4, weight_decay: float = 0.01, optimizer: str = "foreach",
                     cudnn_benchmark: bool = True, seed: int = 0, compile_kwargs: Mapping | None = None,
                     flops_per_image: float | None = None) -> dict:
    """Images/s of ``module`` alone on random (never zero) inputs, with every condition recorded.

    ``mode="inference"``: ``module.eval()``, ``torch.no_grad()``, forward only.
    ``mode="train"``: ``module.train()``; each step is forward, scalar loss (mean of squared outputs,
    in float32), backward and an AdamW(lr, weight_decay) step (``optimizer``: ``make_adamw``), so the
    module's weights change.
    ``precision``: see ``precision_context`` (fp32 = TF32 off; bf16 = autocast, weights stay fp32).
    ``channels_last``: module and inputs in channels_last memory format. ``compile``: ``torch.compile``
    (compilation happens in the warm-up calls, so ``warmup`` must be >= 1; the first call's time is
    reported as ``first_call_s``). Errors (compilation, OOM) propagate; ``sweep.resolution_sweep`` records OOM.
    ``peak_memory_bytes`` (CUDA only) is ``torch.cuda.max_memory_allocated`` after a reset taken once
    the module is on the device, so it includes weights, optimizer state and activations.
    ``flops_per_image`` (from ``flops_per_image`` for this mode): adds achieved ``tflops_per_s`` and
    ``utilisation`` (of the GPU's peak for the precision; None where the peak is not known).

    Returns dict(images_per_s, images_per_s_p10, images_per_s_p90, seconds_per_image, median_s, p10_s,
    p90_s, repeats, warmup, timer, batch_size, image_size, pixels, precision, mode, optimizer, device,
    device_name, channels_last, compile, cudnn_benchmark, peak_memory_bytes, model_bytes, model, n_params,
    first_call_s, flops_per_image, tflops_per_s, utilisation, torch_version).
    """
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
                          in_chans=in_chans, lr=lr, weight_decay=weight_decay, optimizer=optimizer, seed=seed,
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
        images_per_s_p90=batch_size / timing["p10_s"], seconds_per_image=med / batch_size,
        median_s=med, p10_s=timing["p10_s"], p90_s=timing["p90_s"], repeats=repeats, warmup=warmup,
        timer=timing["timer"], batch_size=batch_size, image_size=image_size,
        pixels=image_size * image_size, precision=precision, mode=mode,
        optimizer=optimizer if mode == "train" else None, device=str(dev), device_name=name,
        channels_last=bool(channels_last), compile=bool(compile),
        cudnn_benchmark=bool(cudnn_benchmark) and dev.type == "cuda", peak_memory_bytes=peak,
        model_bytes=_model_bytes(module), model=_model_name(module),
        n_params=int(sum(p.numel() for p in module.parameters())), first_call_s=first_call_s,
        torch_version=torch.__version__,
    )
    out.update(utilisation_fields(flops_per_image, out["images_per_s"], name, precision))
    return out


# --------------------------------------------------------------------------------- the paper's way
def eval_loop_throughput(evaluate_fn: Callable[[], Any], n_images: int | None = None, device=None,
                         warmup: int = 0, repeats: int = 1) -> dict:
    """The paper's Table 2 method: ``n_images / wall time`` of the whole evaluation loop.

    ``evaluate_fn()`` runs the complete zero-shot loop (DataLoader iteration with its workers, JPEG
    decoding and preprocessing, host-to-device copies, the model, the classifier, the metrics); it is
    timed with ``time.perf_counter`` (the device, if given and CUDA, is synchronised before stopping
    the clock). ``n_images`` defaults to what the loop reports: ``result["n_images"]``, ``["n_val"]``
    or ``len(result["predictions"])``. If the result carries its own ``wall_time_s`` (as
    ``evaluate.zero_shot_evaluate`` does), it is kept as ``inner_wall_time_s`` / ``inner_images_per_s``.
    With ``repeats > 1`` the median wall time is reported (all are in ``wall_times_s``; the slowest and
    fastest pass give ``images_per_s_min`` / ``images_per_s_max``).
    """
    if not callable(evaluate_fn):
        raise TypeError(f"parameter evaluate_fn must be callable, got {type(evaluate_fn).__name__}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"parameter repeats must be an int >= 1, got {repeats!r}")
    dev = _device(device) if device is not None else None
    for _ in range(warmup):
        evaluate_fn()
    walls, result = [], None
    for _ in range(repeats):
        if dev is not None:
            _sync(dev)
        t0 = time.perf_counter()
        result = evaluate_fn()
        if dev is not None:
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
               images_per_s_min=n_images / max(walls), images_per_s_max=n_images / min(walls),
               wall_times_s=walls, repeats=repeats, warmup=warmup,
               method="n_images / wall time of the whole evaluation loop (data loading included)")
    if isinstance(result, Mapping) and isinstance(result.get("wall_time_s"), (int, float)):
        out["inner_wall_time_s"] = float(result["wall_time_s"])
        out["inner_images_per_s"] = n_images / float(result["wall_time_s"]) if result["wall_time_s"] else None
    return out


# ------------------------------------------------------------------------------ two variants, one process
def interleaved_ratio(step_a: Callable[[], Any], step_b: Callable[[], Any], device="cpu", rounds: int = 5,
                      warmup: int = 3, repeats: int = 10) -> dict:
    """Time two variants of a step in alternating rounds (a, b, a, b, ...) in one process; each round is a
    ``time_callable`` of ``repeats`` calls after ``warmup``. Returns the per-round medians of both, the
    median of the per-round ratios ``a / b`` in throughput (``b_seconds / a_seconds``) and their spread
    (min, max over rounds): a drift of clocks or temperature during the run hits both variants alike."""
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"parameter rounds must be an int >= 1, got {rounds!r}")
    a_s, b_s = [], []
    for _ in range(rounds):
        a_s.append(time_callable(step_a, device, warmup=warmup, repeats=repeats)["median_s"])
        b_s.append(time_callable(step_b, device, warmup=warmup, repeats=repeats)["median_s"])
    ratios = [b / a for a, b in zip(a_s, b_s)]
    return dict(a_median_s=float(np.median(a_s)), b_median_s=float(np.median(b_s)), a_round_s=a_s,
                b_round_s=b_s, ratio=float(np.median(ratios)), ratio_min=float(min(ratios)),
                ratio_max=float(max(ratios)), rounds=rounds, warmup=warmup, repeats=repeats)


# ------------------------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mvlip_utils.measure.benchmark",
        description="Images/s of one study image tower alone (mvlip_utils.measure.benchmark.model_throughput), "
                    "printed as one JSON record.",
        epilog="example: python -m mvlip_utils.measure.benchmark --encoder swin --size paper --precision bf16 "
               "--batch-size 256 --channels-last --mode train")
    parser.add_argument("--encoder", required=True, help="mambavision, swin, vit or any timm image model by name")
    parser.add_argument("--size", default="paper", help="paper or smoke (the tower's size)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS))
    parser.add_argument("--mode", default="inference", choices=list(MODES))
    parser.add_argument("--optimizer", default="foreach", choices=list(OPTIMIZERS))
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the tower (compiled in warm-up)")
    parser.add_argument("--compile-backend", default="inductor", help="torch.compile backend (eager: a quick test)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--flops", action="store_true", help="count FLOPs per image and report utilisation")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ..settings.profiles import resolve_device
    from ..models.towers import create_image_tower

    args = build_parser().parse_args(argv)
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    tower = create_image_tower(args.encoder, size=args.size, image_size=args.image_size)
    flops = flops_per_image(tower, args.image_size, args.mode, device) if args.flops else None
    record = model_throughput(tower, args.batch_size, args.image_size, args.precision, args.mode, device,
                              channels_last=args.channels_last, compile=args.compile, warmup=args.warmup,
                              repeats=args.repeats, optimizer=args.optimizer, flops_per_image=flops,
                              compile_kwargs={"backend": args.compile_backend} if args.compile else None)
    record.update(encoder=args.encoder, size=args.size, compile_backend=args.compile_backend if args.compile else None)
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
