"""What the benchmark chapter measures for one encoder, and the training chapter's check of the faster steps.

Each ``*_records`` part returns records (dicts) tagged by ``kind`` and ``setting`` for ``benchmark.json``."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from typing import Any, Callable

import torch

from .benchmark import (BEST, PAPER, benchmark_record, eval_loop_throughput, free_memory, is_oom_error,  # noqa: F401
                        interleaved_ratio, make_step, model_throughput)  # (04_benchmark reads suite.*)
from .flops import MODES, flops_per_image
from .step_profile import profile_training_epoch
from .sweep import resolution_sweep, scaled_batch_size
from ..data.files import read_json, write_json
from ..models.towers import architecture, check_encoder, create_image_tower, selective_scan_replaced
from ..settings.params import USER_ERRORS, user_error_exit
from ..settings.precision import precision_context
from ..settings.profiles import (ENCODERS, PROFILES, TRAIN_STEPS, BenchSettings, StudyConfig, get_bench_settings,
                                 get_config)
from ..settings.reproducibility import deterministic_mode, deterministic_settings
from ..train import experiment as exp
from ..train import loop as train
from ..train.device_share import timing_lock
from ..train.evaluate import synchronize
from ..train.provenance import collect_provenance, device_description
from ..train.run_folder import encoder_dir

def eval_loop_records(experiment, bench: BenchSettings) -> list[dict]:
    """The paper's Table 2 method, JPEGs decoded in ``bench.eval_workers`` workers and from the uint8 cache;
    ``bench.eval_repeats`` passes each after one untimed pass."""
    out = []
    for source, workers in (("files", bench.eval_workers), ("cache", 0)):
        loader = exp.eval_loader(experiment, source, workers)
        record = eval_loop_throughput(lambda: exp.evaluate_experiment(experiment, progress=False, loader=loader),
                                      device=experiment.device, warmup=1, repeats=bench.eval_repeats)
        out.append(dict(record, kind="eval_loop", source="jpeg" if source == "files" else "uint8_cache",
                        num_workers=workers, batch_size=experiment.config.eval_batch_size,
                        precision=experiment.config.precision, image_size=experiment.config.image_size))
    return out


def run_flops(config: StudyConfig, device) -> dict[str, float]:
    """{"inference": forward, "train": forward + backward} FLOPs per image of the encoder's tower, counted once
    on a fresh tower and kept in the encoder's flops.json."""
    path = encoder_dir(config) / "flops.json"
    tower_id = architecture(config.encoder, config.model_size, config.image_size)
    if path.is_file() and read_json(path).get("architecture") == tower_id:
        return {mode: float(read_json(path)[mode]) for mode in MODES}
    tower = create_image_tower(config.encoder, size=config.model_size, image_size=config.image_size)
    counted = {mode: flops_per_image(tower, config.image_size, mode, device) for mode in MODES}
    write_json(path, {**counted, "image_size": config.image_size, "architecture": tower_id,
                      "counted_by": "torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions, attention)"})
    return counted


def flops_records(flops: dict[str, float], config: StudyConfig) -> list[dict]:
    return [{"mode": mode, "image_size": config.image_size, "flops_per_image": flops[mode], "kind": "flops"}
            for mode in MODES]


def model_only_records(tower, config: StudyConfig, bench: BenchSettings, device,
                       flops: dict[str, float] | None = None) -> list[dict]:
    """The image tower alone at the paper's conditions (inference, training step) and the best inference
    settings (bf16, channels_last, ``bench.best_batch``); ``flops``: {mode: FLOPs per image}."""
    flops = flops or {}
    plan = [(PAPER, "inference", config.precision, config.eval_batch_size, False),
            (PAPER, "train", config.precision, config.batch_size, False),
            (BEST, "inference", "bf16", bench.best_batch, True)]
    out = []
    for setting, mode, precision, batch, channels_last in plan:
        try:
            record = model_throughput(tower, batch, config.image_size, precision, mode, device,
                                      channels_last=channels_last, warmup=bench.warmup, repeats=bench.repeats,
                                      lr=config.lr, weight_decay=config.weight_decay, flops_per_image=flops.get(mode))
        except Exception as exc:  # noqa: BLE001 - an OOM at the large batch must not lose the rest
            if not is_oom_error(exc):
                raise
            record = dict(mode=mode, precision=precision, batch_size=batch, images_per_s=None,
                          error=f"out of memory: {str(exc)[:200]}")
        out.append(dict(record, kind="model_only", setting=setting))
    tower.to(memory_format=torch.contiguous_format)
    return out


def sweep_records(factory: Callable[[int], Any], config: StudyConfig, bench: BenchSettings, device) -> list[dict]:
    """``resolution_sweep`` over the profile's resolutions, inference, pixels per batch about constant
    (``bench.sweep_batch`` images at the first); bf16 runs channels_last."""
    resolutions = [int(r) for r in (bench.resolutions or [config.image_size * k for k in (1, 2, 3)])]
    precision = bench.sweep_precision or config.precision
    frame = resolution_sweep(factory, resolutions, lambda r: scaled_batch_size(bench.sweep_batch, resolutions[0], r),
                             precision=precision, device=device, channels_last=precision == "bf16",
                             warmup=bench.warmup, repeats=bench.repeats)
    return [dict(row, kind="resolution_sweep") for row in frame.to_dict(orient="records")]


def scan_cost_records(tower, config: StudyConfig, bench: BenchSettings, device, rounds: int = 3) -> list[dict]:
    """MambaVision's tower with its selective scan against it with the scan replaced by its skip term, in
    alternating rounds; ``ratio``: throughput with the scan as a fraction of that without."""
    plan = [("inference", config.precision, config.eval_batch_size, False),
            ("train", config.precision, config.batch_size, False),
            ("inference", "bf16", bench.best_batch, True)]
    out = []
    dev = torch.device(device)
    for mode, precision, batch, channels_last in plan:
        step, _ = make_step(tower, batch, config.image_size, precision, mode, dev, channels_last,
                            fused=mode == "train", lr=config.lr)

        def without_scan(step=step):
            with selective_scan_replaced():
                return step()

        with precision_context(precision, dev, autocast=False):
            r = interleaved_ratio(step, without_scan, dev, rounds=rounds, warmup=bench.warmup, repeats=bench.repeats)
        out.append({"mode": mode, "precision": precision, "batch_size": batch, "channels_last": channels_last,
                    "images_per_s_with_scan": batch / r["a_median_s"],
                    "images_per_s_without_scan": batch / r["b_median_s"], **r, "kind": "scan_cost"})
        del step, without_scan  # the closures hold the optimizer, its state and the batch
        tower.zero_grad(set_to_none=True)
        free_memory(dev)
    tower.to(memory_format=torch.contiguous_format)
    return out


STEP_CHECK_TOLERANCE = 1e-4  # relative difference of per-epoch mean losses that counts as the same numerics


@timing_lock()  # its images/s measured alone on a shared GPU
def train_step_check(config: StudyConfig, images: int, epochs: int = 2, steps: tuple[str, ...] = ("eager", "fused"),
                     progress: bool = False, profile_steps: int = 0, deterministic_check: bool = False) -> dict[str, Any]:
    """Train ``epochs`` short epochs on the first ``images`` training images from one start once per step in
    ``steps``; compare per-epoch losses with the eager step's (against ``STEP_CHECK_TOLERANCE``) and last-epoch
    images/s. A failing step is recorded with its error. ``profile_steps``: then profile each step
    (``profile``, trace in the encoder's step_trace_<step>.json.gz); ``deterministic_check``: then
    ``_deterministic_check``. Written to the encoder's step_check.json with provenance."""
    base = exp.build_experiment(config.replace(epochs=epochs), progress=False)
    subset = torch.utils.data.Subset(base.train_set, range(min(images, len(base.train_set))))
    if len(subset) < config.batch_size:
        raise ValueError(f"parameter step_check_images={images} gives fewer images than one batch ({config.batch_size})")
    variants = []
    for step in steps:
        try:
            variants.append(_train_short(base, config, subset, step, epochs, progress, profile_steps))
        except Exception as exc:  # noqa: BLE001 - a failing step (compilation) is a result, not the end
            if step == "eager":
                raise
            variants.append({"train_step": step, "error": f"{type(exc).__name__}: {str(exc)[:300]}", "losses": [],
                             "images_per_s": None, "max_rel_loss_difference": None, "within_tolerance": None})
        free_memory()
    reference = variants[0]
    for v in (v for v in variants if not v.get("error")):
        diffs = [abs(a - b) / abs(b) for a, b in zip(v["losses"], reference["losses"])]
        v.update(max_rel_loss_difference=max(diffs), within_tolerance=max(diffs) <= STEP_CHECK_TOLERANCE,
                 speedup=v["images_per_s"] / reference["images_per_s"])
    out = {"images": len(subset), "epochs": epochs, "batch_size": config.batch_size, "precision": config.precision,
           "tolerance": STEP_CHECK_TOLERANCE, "read_loss_every": train.READ_LOSS_EVERY, "variants": variants,
           "device_name": device_description(base.device), "provenance": collect_provenance(base.device)}
    if deterministic_check:
        out["deterministic"] = _deterministic_check(base, config, subset, epochs, progress, variants)
    write_json(encoder_dir(config) / "step_check.json", out)
    return out


def _deterministic_check(base, config: StudyConfig, subset, epochs: int, progress: bool,
                         variants: list[dict[str, Any]]) -> dict[str, Any]:
    """``config.train_step`` trained twice in deterministic mode from the check's start: images/s against the
    default mode's and whether the repeats' losses are bit-identical. An operation without a deterministic
    implementation is recorded as the error."""
    step = config.train_step
    out: dict[str, Any] = {"train_step": step, "repeats": 2}
    default = next((v for v in variants if v["train_step"] == step and not v.get("error")), None)
    try:
        default = default or _train_short(base, config, subset, step, epochs, progress)
        repeats = []
        for _ in range(out["repeats"]):
            free_memory()
            with deterministic_mode(True):
                out["settings"] = deterministic_settings()
                repeats.append(_train_short(base, config.replace(deterministic=True), subset, step, epochs, progress))
    except Exception as exc:  # noqa: BLE001 - e.g. an operation without a deterministic implementation
        return {**out, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}
    rates = [r["images_per_s"] for r in repeats]
    rate = sum(rates) / len(rates)
    out.update(default_losses=default["losses"], default_images_per_s=default["images_per_s"],
               losses=[r["losses"] for r in repeats], images_per_s_repeats=rates, deterministic_images_per_s=rate,
               relative_speed=rate / default["images_per_s"],
               bit_identical=all(r["losses"] == repeats[0]["losses"] for r in repeats))
    return out


def _train_short(base, config: StudyConfig, subset, step: str, epochs: int, progress: bool,
                 profile_steps: int = 0) -> dict[str, Any]:
    """``epochs`` epochs of ``subset`` with training step ``step`` from the run's initial towers (a copy of the
    text tower); then, with ``profile_steps``, one profiled epoch of that many steps (+ 2)."""
    run_config = config.replace(train_step=step, epochs=epochs)
    model = exp.assemble_model(config, exp.seeded_image_tower(config), copy.deepcopy(base.model.text), base.device)
    experiment = dataclasses.replace(base, config=run_config, model=model, train_set=subset,
                                     compiled_visual=exp.training_tower(run_config, model.visual))
    optimizer, scheduler = exp.make_optimizer(experiment)
    loss_fn = train.ClipLoss()
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
                                                    trace_path=encoder_dir(config) / f"step_trace_{step}.json.gz")
        except Exception as exc:  # noqa: BLE001 - the check's losses and speed stand without their profile
            out["profile"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    return out


def deterministic_line(record: dict[str, Any]) -> str:
    """One line of a step check's deterministic record (the command line prints it)."""
    if record.get("error"):
        return f"{record['train_step']:9s} deterministic: {record['error']}"
    return (f"{record['train_step']:9s} deterministic images/s {record['deterministic_images_per_s']:8.1f} against "
            f"{record['default_images_per_s']:.1f} by default (x{record['relative_speed']:.2f}); "
            f"{record['repeats']} repeats' losses {'bit-identical' if record['bit_identical'] else 'DIFFER'}")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m mvlip_utils.measure.benchmark_suite",
        description="The training chapter's step check alone (two short epochs per training step from one start, "
                    "losses against the eager step's, each step profiled), per encoder, into "
                    "<results-dir>/<profile>/<encoder>/step_check.json, apart from a study's runs.")
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
                        help="also train the profile's train_step twice with deterministic=True: images/s against "
                             "the default's, losses bit-identical? (default: the profile's step_check_deterministic)")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = {k: v for k, v in (("step_check_steps", args.steps), ("step_check_images", args.images),
                                       ("step_profile_steps", args.profile_steps),
                                       ("step_check_deterministic", args.deterministic_check)) if v is not None}
        bench = get_bench_settings(args.profile, **overrides)
        for encoder in args.encoders:
            config = get_config(args.profile, encoder=encoder, results_dir=args.results_dir)
            check_encoder(encoder)
            check = train_step_check(config, bench.step_check_images, steps=tuple(bench.step_check_steps),
                                     profile_steps=bench.step_profile_steps,
                                     deterministic_check=bench.step_check_deterministic)
            nan = float("nan")
            for v in check["variants"]:
                p, diff = v.get("profile") or {}, v["max_rel_loss_difference"]
                print(f"{encoder:12s} {v['train_step']:9s} images/s {v['images_per_s'] or nan:8.1f} "
                      f"max rel. loss diff {nan if diff is None else diff:.1e} "
                      f"GPU kernels {p.get('gpu_busy_ms') or nan:7.2f} ms per step "
                      f"{v.get('error') or p.get('error') or ''}", flush=True)
            if check.get("deterministic"):
                print(f"{encoder:12s} {deterministic_line(check['deterministic'])}", flush=True)
    except USER_ERRORS as exc:
        return user_error_exit(exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
