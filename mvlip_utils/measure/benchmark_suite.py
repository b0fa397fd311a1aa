"""What the benchmark chapter measures for one run, part by part, with ``benchmark``'s one timing method.

Each part returns records (dicts) tagged by ``kind`` and ``setting`` for the run's ``benchmark.json``:

- ``eval_loop_records``: the paper's Table 2 method (validation images over the wall time of the whole
  zero-shot loop) with JPEG decoding in ``eval_workers`` DataLoader workers, and from the uint8 cache.
- ``model_only_records``: the image tower alone on random inputs: the paper's conditions (the run's
  precision, batch 32, inference and a training step with the authors' AdamW and with fused AdamW),
  strict fp32 beside them where the run's precision is another, and the best settings (bf16,
  channels_last, a large batch); FLOPs per image and the fraction of the GPU's peak.
- ``compiled_record``: the best inference settings under torch.compile, in a child process with a time
  limit (compilation can take minutes, or fail; either is recorded, never fatal).
- ``sweep_records``: cost and memory against input resolution.
- ``scan_cost_records``: MambaVision only: the same tower with its selective scan and with the scan
  replaced by its skip term ``u * D``, timed in alternating rounds in one process.
- ``flops_records``: FLOPs per image of a forward pass and of a training step.

The settings (repeats, batch sizes, resolutions, time limits) are the profile's ``BenchSettings``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any, Callable

import torch

from . import benchmark as B
from . import sweep
from .flops import flops_per_image, utilisation_fields
from .records import BEST, COMPILED, PAPER, PAPER_FUSED, STRICT
from ..settings.precision import precision_context
from ..settings.profiles import BenchSettings, StudyConfig



def _tag(record: dict, kind: str, setting: str | None = None, **extra: Any) -> dict:
    out = {**record, "kind": kind, **extra}
    if setting is not None:
        out["setting"] = setting
    return out


# ----------------------------------------------------------------------------------- the paper's way
def eval_loop_records(experiment, bench: BenchSettings) -> list[dict]:
    """The paper's method with JPEG decoding in ``bench.eval_workers`` workers and from the uint8 cache:
    n_images / wall time of the whole zero-shot loop, ``bench.eval_repeats`` passes each (median, and the
    slowest and fastest pass), after one untimed pass."""
    from ..train.experiment import eval_loader, evaluate_experiment

    out = []
    for source, workers in (("files", bench.eval_workers), ("cache", 0)):
        loader = eval_loader(experiment, source, workers)
        record = B.eval_loop_throughput(lambda: evaluate_experiment(experiment, progress=False, loader=loader),
                                        device=experiment.device, warmup=1, repeats=bench.eval_repeats)
        out.append(_tag(record, "eval_loop", None, source="jpeg" if source == "files" else "uint8_cache",
                        num_workers=workers, batch_size=experiment.config.eval_batch_size,
                        precision=experiment.config.precision, image_size=experiment.config.image_size))
    return out


# ------------------------------------------------------------------------------------ the model alone
def run_flops(config: StudyConfig, device) -> dict[str, float]:
    """FLOPs per image of the run's tower, {"inference": forward, "train": forward + backward}, counted once
    (``flops.flops_per_image`` on a freshly built tower: FLOPs do not depend on the weights) and kept in
    the run folder's ``flops.json`` for the training and benchmark chapters."""
    from ..train.results import read_json, run_dir, write_json
    from ..models.towers import architecture, create_image_tower

    path = run_dir(config) / "flops.json"
    tower_id = architecture(config.encoder, config.model_size, config.image_size)
    if path.is_file():
        saved = read_json(path)
        if saved.get("architecture") == tower_id:
            return {mode: float(saved[mode]) for mode in B.MODES}
    tower = create_image_tower(config.encoder, size=config.model_size, image_size=config.image_size)
    counted = {mode: flops_per_image(tower, config.image_size, mode, device) for mode in B.MODES}
    write_json(path, {**counted, "image_size": config.image_size, "architecture": tower_id,
                      "counted_by": "torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions, attention)"})
    return counted


def flops_records(flops: dict[str, float], config: StudyConfig) -> list[dict]:
    """``run_flops``' counts as benchmark records (kind ``flops``)."""
    return [_tag({"mode": mode, "image_size": config.image_size, "flops_per_image": flops[mode]}, "flops")
            for mode in B.MODES]


def model_only_records(tower, config: StudyConfig, bench: BenchSettings, device,
                       flops: dict[str, float] | None = None) -> list[dict]:
    """The image tower alone: the paper's conditions, strict fp32 (if the run uses another precision) and
    the best settings; ``flops``: {mode: FLOPs per image} for the utilisation columns."""
    flops = flops or {}
    plan = [(PAPER, "inference", config.precision, config.eval_batch_size, False, "foreach"),
            (PAPER, "train", config.precision, config.batch_size, False, "foreach"),
            (PAPER_FUSED, "train", config.precision, config.batch_size, False, "fused")]
    if config.precision != "fp32":
        plan += [(STRICT, "inference", "fp32", config.eval_batch_size, False, "foreach"),
                 (STRICT, "train", "fp32", config.batch_size, False, "foreach")]
    plan += [(BEST, "inference", "bf16", bench.best_batch, True, "foreach"),
             (BEST, "train", "bf16", bench.best_batch, True, "fused")]
    out = []
    for setting, mode, precision, batch, channels_last, optimizer in plan:
        try:
            record = B.model_throughput(tower, batch, config.image_size, precision, mode, device,
                                        channels_last=channels_last, warmup=bench.warmup, repeats=bench.repeats,
                                        optimizer=optimizer, lr=config.lr, weight_decay=config.weight_decay,
                                        flops_per_image=flops.get(mode))
        except Exception as exc:  # noqa: BLE001 - an OOM at the large batch must not lose the rest
            if not B.is_oom_error(exc):
                raise
            record = dict(mode=mode, precision=precision, batch_size=batch, images_per_s=None,
                          error=f"out of memory: {str(exc)[:200]}")
        out.append(_tag(record, "model_only", setting))
    tower.to(memory_format=torch.contiguous_format)
    return out


def compiled_record(config: StudyConfig, bench: BenchSettings, device: str, flops: float | None = None,
                    backend: str = "inductor", python: str = sys.executable) -> dict:
    """The best inference settings under torch.compile, measured by ``python -m mvlip_utils.measure.benchmark`` in a
    child process given ``bench.compile_timeout_s`` seconds (its whole process group is killed after that).
    A time-out or failure is a record with ``error``; ``bench.compile_timeout_s == 0`` skips it."""
    base = dict(mode="inference", precision="bf16", batch_size=bench.best_batch, channels_last=True,
                compile=True, compile_backend=backend, images_per_s=None, timeout_s=bench.compile_timeout_s)
    if bench.compile_timeout_s <= 0:
        return _tag({**base, "error": "skipped (compile_timeout_s=0)"}, "model_only", COMPILED)
    cmd = [python, "-m", "mvlip_utils.measure.benchmark", "--encoder", config.encoder, "--size", config.model_size,
           "--image-size", str(config.image_size), "--batch-size", str(bench.best_batch), "--precision", "bf16",
           "--channels-last", "--compile", "--compile-backend", backend, "--device", str(device),
           "--warmup", str(max(2, bench.warmup)), "--repeats", str(bench.repeats), "--seed", str(config.seed)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        stdout, stderr = proc.communicate(timeout=bench.compile_timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the child and inductor's compile workers
        proc.communicate()
        return _tag({**base, "error": f"timed out after {bench.compile_timeout_s} s"}, "model_only", COMPILED)
    wall = time.perf_counter() - started
    record = _last_json_line(stdout)
    if proc.returncode != 0 or record is None:
        tail = (stderr or stdout or "").strip().splitlines()[-3:]
        return _tag({**base, "error": f"exit {proc.returncode}: {' | '.join(tail)[-400:]}",
                     "process_wall_s": wall}, "model_only", COMPILED)
    record.update(process_wall_s=wall, **utilisation_fields(flops, record["images_per_s"], record["device_name"],
                                                             "bf16"))
    return _tag(record, "model_only", COMPILED)


def _last_json_line(text: str) -> dict | None:
    for line in reversed((text or "").strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


# ---------------------------------------------------------------------------------- against resolution
def sweep_resolutions(config: StudyConfig, bench: BenchSettings) -> list[int]:
    return [int(r) for r in (bench.resolutions or [config.image_size * k for k in (1, 2, 3)])]


def sweep_records(factory: Callable[[int], Any], config: StudyConfig, bench: BenchSettings, device,
                  log: Callable[[str], Any] | None = None) -> list[dict]:
    """``sweep.resolution_sweep`` over the profile's resolutions, inference, the pixels per batch held
    about constant (``bench.sweep_batch`` images at the first resolution); bf16 runs channels_last."""
    resolutions = sweep_resolutions(config, bench)
    precision = bench.sweep_precision or config.precision
    frame = sweep.resolution_sweep(factory, resolutions,
                               lambda r: sweep.scaled_batch_size(bench.sweep_batch, resolutions[0], r),
                               precision=precision, device=device, channels_last=precision == "bf16",
                               warmup=bench.warmup, repeats=bench.repeats, catch_errors=True, log=log)
    return [_tag(row, "resolution_sweep") for row in frame.to_dict(orient="records")]


# --------------------------------------------------------------------------------- the scan's cost
def scan_cost_records(tower, config: StudyConfig, bench: BenchSettings, device, rounds: int = 3) -> list[dict]:
    """MambaVision's tower with its selective scan against the same tower with the scan replaced by its
    skip term (``towers.selective_scan_replaced``), alternating rounds in one process, at the paper's
    inference and training conditions and at the best inference settings. ``ratio`` is the throughput with
    the scan as a fraction of the throughput without it."""
    from ..models.towers import selective_scan_replaced

    plan = [("inference", config.precision, config.eval_batch_size, False),
            ("train", config.precision, config.batch_size, False),
            ("inference", "bf16", bench.best_batch, True)]
    out = []
    dev = B._device(device)
    for mode, precision, batch, channels_last in plan:
        step, _ = B.make_step(tower, batch, config.image_size, precision, mode, dev, channels_last,
                              optimizer="fused" if mode == "train" else "foreach", lr=config.lr)

        def without_scan(step=step):
            with selective_scan_replaced():
                return step()

        with precision_context(precision, dev, autocast=False):
            r = B.interleaved_ratio(step, without_scan, dev, rounds=rounds, warmup=bench.warmup,
                                    repeats=bench.repeats)
        out.append(_tag({"mode": mode, "precision": precision, "batch_size": batch, "channels_last": channels_last,
                         "images_per_s_with_scan": batch / r["a_median_s"],
                         "images_per_s_without_scan": batch / r["b_median_s"], **r}, "scan_cost"))
        del step, without_scan  # the closures hold the optimizer, its state and the batch
        tower.zero_grad(set_to_none=True)
        B.free_memory(dev)
    tower.to(memory_format=torch.contiguous_format)
    return out


# ------------------------------------------------------------------------ a faster step, the same run?
STEP_CHECK_TOLERANCE = 1e-4  # relative difference of per-epoch mean losses that counts as the same numerics


def train_step_check(config: StudyConfig, images: int, epochs: int = 2, steps: tuple[str, ...] = ("eager", "fused"),
                     progress: bool = False, profile_steps: int = 0, deterministic_check: bool = False) -> dict[str, Any]:
    """``_train_step_check`` holding the device's timing lock when this runs in a chain of the study that
    shares its GPU with others (``device_share.timing_lock``: the check's images/s are measured alone)."""
    from ..train.device_share import timing_lock

    with timing_lock():
        return _train_step_check(config, images, epochs, steps, progress, profile_steps, deterministic_check)


def _train_step_check(config: StudyConfig, images: int, epochs: int = 2, steps: tuple[str, ...] = ("eager", "fused"),
                      progress: bool = False, profile_steps: int = 0, deterministic_check: bool = False) -> dict[str, Any]:
    """Train ``epochs`` short epochs on the first ``images`` training images from the same start (seed,
    data order, caption draws) once per training step (``profiles.TRAIN_STEPS``: the eager one the authors
    ran, fused AdamW, and on a GPU torch.compile too) and compare the per-epoch mean losses with the eager
    step's (largest relative difference, against ``STEP_CHECK_TOLERANCE``) and the training images/s of
    the last epoch. A step that fails (torch.compile can) is recorded with its error. With
    ``profile_steps``, each step then trains one more short epoch under torch.profiler
    (``step_profile.profile_training_epoch``: where the time of ``profile_steps`` steps goes, as each
    variant's ``profile``; the trace of each is kept gzipped in the run folder as
    step_trace_<step>.json.gz). With ``deterministic_check``, the run's own ``train_step`` then trains twice
    more in deterministic mode (``deterministic_check``'s record, the check's ``deterministic``). Written to
    the run folder's step_check.json, with the training loop's ``READ_LOSS_EVERY`` and the provenance of the
    measurement."""

    from ..train import experiment as exp
    from ..train import loop as train
    from ..train.results import collect_provenance, device_description, run_dir, write_json

    if not steps or steps[0] != "eager":
        raise ValueError(f"parameter steps={steps!r} must start with 'eager' (the reference)")
    base = exp.build_experiment(config.replace(epochs=epochs), progress=False)
    subset = torch.utils.data.Subset(base.train_set, range(min(images, len(base.train_set))))
    if len(subset) < config.batch_size:
        raise ValueError(f"parameter step_check_images={images} gives fewer images than one batch ({config.batch_size})")
    loss_fn = train.ClipLoss()
    variants = []
    for step in steps:
        try:
            variants.append(_train_short(base, config, subset, step, epochs, loss_fn, progress, profile_steps))
        except Exception as exc:  # noqa: BLE001 - a failing step (compilation) is a result, not the end
            if step == "eager":
                raise
            variants.append({"train_step": step, "error": f"{type(exc).__name__}: {str(exc)[:300]}", "losses": [],
                             "images_per_s": None})
        B.free_memory()
    reference = variants[0]
    for v in variants:
        if v.get("error"):
            v.update(max_rel_loss_difference=None, within_tolerance=None, speedup=None)
            continue
        diffs = [abs(a - b) / abs(b) for a, b in zip(v["losses"], reference["losses"])]
        v.update(max_rel_loss_difference=max(diffs), within_tolerance=max(diffs) <= STEP_CHECK_TOLERANCE,
                 speedup=v["images_per_s"] / reference["images_per_s"])
    out = {"images": len(subset), "epochs": epochs, "batch_size": config.batch_size, "precision": config.precision,
           "tolerance": STEP_CHECK_TOLERANCE, "device_name": device_description(base.device),
           "profile_steps": profile_steps, "read_loss_every": train.READ_LOSS_EVERY, "variants": variants,
           "provenance": collect_provenance(base.device)}
    if deterministic_check:
        out["deterministic"] = _deterministic_check(base, config, subset, epochs, loss_fn, progress, variants)
    write_json(run_dir(config) / "step_check.json", out)
    return out


DETERMINISTIC_REPEATS = 2


def _deterministic_check(base, config: StudyConfig, subset, epochs: int, loss_fn, progress: bool,
                         variants: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's own training step (``config.train_step``) trained ``DETERMINISTIC_REPEATS`` times in
    deterministic mode (``reproducibility.deterministic_mode``) from the check's start: the training images/s
    of the last epoch of each against the default mode's (the step's variant in ``variants``, else one more
    training), the cost (1 - deterministic / default), and whether the repeats' per-epoch losses are
    bit-identical (equal as floats), with their largest relative difference from the default mode's. An
    operation without a deterministic implementation is recorded as the error, naming it."""
    from ..settings.reproducibility import CUBLAS_ENV, deterministic_mode, deterministic_settings

    step = config.train_step
    out: dict[str, Any] = {"train_step": step, "repeats": DETERMINISTIC_REPEATS,
                           # cuBLAS sizes its workspace at the process's first call: what it was then matters
                           "cublas_workspace_config_before": os.environ.get(CUBLAS_ENV)}
    default = next((v for v in variants if v["train_step"] == step and not v.get("error")), None)
    try:
        if default is None:
            default = _train_short(base, config, subset, step, epochs, loss_fn, progress)
            B.free_memory()
        repeats = []
        for _ in range(DETERMINISTIC_REPEATS):
            with deterministic_mode(True):
                out["settings"] = deterministic_settings()
                repeats.append(_train_short(base, config.replace(deterministic=True), subset, step, epochs, loss_fn,
                                            progress))
            B.free_memory()
    except Exception as exc:  # noqa: BLE001 - e.g. an operation without a deterministic implementation
        out.update(error=f"{type(exc).__name__}: {str(exc)[:400]}", bit_identical=None,
                   default_images_per_s=default["images_per_s"] if default else None, deterministic_images_per_s=None)
        return out
    rates = [r["images_per_s"] for r in repeats]
    rate = sum(rates) / len(rates)
    out.update(default_losses=default["losses"], default_images_per_s=default["images_per_s"],
               losses=[r["losses"] for r in repeats], images_per_s_repeats=rates, deterministic_images_per_s=rate,
               relative_speed=rate / default["images_per_s"], cost=1 - rate / default["images_per_s"],
               bit_identical=all(r["losses"] == repeats[0]["losses"] for r in repeats),
               max_rel_difference_from_default=max(abs(a - b) / abs(b) for r in repeats
                                                   for a, b in zip(r["losses"], default["losses"])))
    return out


def _train_short(base, config: StudyConfig, subset, step: str, epochs: int, loss_fn, progress: bool,
                 profile_steps: int = 0) -> dict[str, Any]:
    """``epochs`` epochs of ``subset`` with training step ``step`` from the run's initial towers: the image
    tower from its seed, a copy of the run's text tower (with ``train_text`` a variant trains its copy);
    then, with ``profile_steps``, one profiled epoch of that many steps (+ 2)."""
    import copy
    import dataclasses

    from ..train import experiment as exp
    from ..train import loop as train
    from ..train.evaluate import synchronize
    from ..train.results import run_dir
    from .step_profile import profile_training_epoch

    run_config = config.replace(train_step=step, epochs=epochs)
    model = exp.assemble_model(config, exp.seeded_image_tower(config), copy.deepcopy(base.model.text), base.device)
    experiment = dataclasses.replace(base, config=run_config, model=model, train_set=subset,
                                     compiled_visual=exp.training_tower(run_config, model.visual))
    optimizer, scheduler = exp.make_optimizer(experiment)
    losses, seconds = [], []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        losses.append(train.train_one_epoch(experiment, optimizer, scheduler, loss_fn, epoch, progress))
        synchronize(base.device)
        seconds.append(time.perf_counter() - started)
    rate = (len(subset) // config.batch_size * config.batch_size) / seconds[-1]
    out = {"train_step": step, "losses": losses, "epoch_seconds": seconds, "images_per_s": rate}
    if profile_steps:
        try:
            out["profile"] = profile_training_epoch(experiment, optimizer, scheduler, loss_fn, epochs + 1, profile_steps,
                                                    trace_path=run_dir(config) / f"step_trace_{step}.json.gz")
        except Exception as exc:  # noqa: BLE001 - the check's losses and speed stand without their profile
            out["profile"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return out


# ----------------------------------------------------------------------------- the step check alone
def deterministic_line(record: dict[str, Any]) -> str:
    """One line of a step check's deterministic record (the command line prints it)."""
    if record.get("error"):
        return f"{record['train_step']:9s} deterministic: {record['error']}"
    return (f"{record['train_step']:9s} deterministic images/s {record['deterministic_images_per_s']:8.1f} against "
            f"{record['default_images_per_s']:.1f} by default (x{record['relative_speed']:.2f}); "
            f"{record['repeats']} repeats' losses {'bit-identical' if record['bit_identical'] else 'DIFFER'}")


def build_parser():
    import argparse

    from ..settings.profiles import ENCODERS, PROFILES, TRAIN_STEPS

    parser = argparse.ArgumentParser(
        prog="python -m mvlip_utils.measure.benchmark_suite",
        description="The training chapter's step check alone (train_step_check: two short epochs per training "
                    "step from the same start, the per-epoch losses against the eager step's, then each step "
                    "profiled), per encoder, into <results-dir>/<profile>/<encoder>/step_check.json with the "
                    "provenance of the measurement. For measuring steps apart from a study's runs.")
    parser.add_argument("--profile", default="smoke", choices=list(PROFILES))
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS),
                        help=f"the paper's {list(ENCODERS)} (default) and any timm image model by name")
    parser.add_argument("--results-dir", required=True, help="folder of the run folders written (not a study's)")
    parser.add_argument("--steps", nargs="+", choices=list(TRAIN_STEPS), default=None,
                        help="the steps compared, eager first (default: the profile's step_check_steps)")
    parser.add_argument("--images", type=int, default=None, help="images per epoch (default: the profile's)")
    parser.add_argument("--profile-steps", type=int, default=None,
                        help="steps profiled per training step (default: the profile's step_profile_steps)")
    parser.add_argument("--deterministic-check", action="store_true", default=None,
                        help="also train the profile's own train_step twice with deterministic=True: its images/s "
                             "against the default mode's, and whether the repeats' losses are bit-identical "
                             "(default: the profile's step_check_deterministic)")
    parser.add_argument("--read-loss-every", type=int, default=None,
                        help="the training loop's READ_LOSS_EVERY (default: the loop's own; 1 reads every step's "
                             "loss as the loop once did)")
    return parser


def main(argv=None) -> int:
    from ..models.timm_towers import check_encoder
    from ..train import loop as train
    from ..settings.params import USER_ERRORS, user_error_exit
    from ..settings.profiles import get_bench_settings, get_config

    args = build_parser().parse_args(argv)
    try:
        overrides = {k: v for k, v in (("step_check_steps", args.steps), ("step_check_images", args.images),
                                       ("step_profile_steps", args.profile_steps),
                                       ("step_check_deterministic", args.deterministic_check)) if v is not None}
        bench = get_bench_settings(args.profile, **overrides)
        if args.read_loss_every is not None:
            if args.read_loss_every < 1:
                raise ValueError(f"parameter --read-loss-every={args.read_loss_every} must be at least 1")
            train.READ_LOSS_EVERY = args.read_loss_every
        for encoder in args.encoders:
            config = get_config(args.profile, encoder=encoder, results_dir=args.results_dir)
            check_encoder(encoder)
            check = train_step_check(config, bench.step_check_images, steps=tuple(bench.step_check_steps),
                                     profile_steps=bench.step_profile_steps,
                                     deterministic_check=bench.step_check_deterministic)
            for v in check["variants"]:
                p = v.get("profile") or {}
                print(f"{encoder:12s} {v['train_step']:9s} images/s {v['images_per_s'] or float('nan'):8.1f} "
                      f"max rel. loss diff {v['max_rel_loss_difference'] if v['max_rel_loss_difference'] is not None else float('nan'):.1e} "
                      f"GPU kernels {p.get('gpu_busy_ms') or float('nan'):7.2f} ms per step "
                      f"{v.get('error') or p.get('error') or ''}", flush=True)
            if check.get("deterministic"):
                print(f"{encoder:12s} {deterministic_line(check['deterministic'])}", flush=True)
    except USER_ERRORS as exc:
        return user_error_exit(exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
