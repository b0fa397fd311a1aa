"""The training loop: ``train_run`` trains one run (one seed) epoch by epoch with a validation pass, a checkpoint
after each epoch and exact resume; ``train_seeds`` every seed in turn; ``python -m mvlip_utils.train`` runs them.

Protocol (the paper's): AdamW over the image tower and its projection (the text tower frozen unless
``train_text``, the temperature fixed at 0.07 unless ``learn_temperature``), cosine annealing stepped every
batch, grad-norm clip, batch 32 with drop_last, open_clip's ``ClipLoss``; each sample gets one of the 10
templates at random. The model as built is first evaluated zero-shot in the run's precision and in fp16
(``before_training.json``). Under torchrun the image tower is wrapped in DDP, ``batch_size`` is the global
batch and rank 0 alone evaluates and writes. Shuffling and caption draws are seeded per epoch: a resumed run
ends with an uninterrupted one's metrics (on a GPU bit for bit only with ``deterministic=True``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
import math
import time
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from open_clip import ClipLoss
from torch.profiler import record_function

from ..data import folders as data_mod
from ..data.files import write_json
from . import distributed as dist_mod
from . import run_folder as rf
from .checkpoint import CheckpointWriter, load_checkpoint, read_checkpoint
from .evaluate import progress_iter, synchronize, to_model_input
from .experiment import (Experiment, build_experiment, caption_features, evaluate_experiment, make_optimizer,
                         prepare_shared_inputs, training_tower)
from .provenance import device_description, versions
from ..settings.precision import autocast_region, precision_context
from ..settings.profiles import StudyConfig
from ..settings.reproducibility import deterministic_mode, prepare_environment
from ..models.towers import SSM_BACKEND, count_parameters
from ..models.towers import WeightsUnavailableError, architecture

logger = logging.getLogger("mvlip_utils.train")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# Step losses stay on the device (reading one makes the host wait for it) and are read back, for the progress
# bar and the finite check, every this many steps and at the end of the epoch.
READ_LOSS_EVERY = 50

# The names of a training step's phases in a torch.profiler trace (read by ``step_profile``).
PHASES = {"forward": "mvlip.forward", "backward": "mvlip.backward", "optimizer": "mvlip.optimizer",
          "loss_read": "mvlip.loss_read"}


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream)


def contrastive_loss(experiment: Experiment, loss_fn: ClipLoss, images: torch.Tensor, labels: torch.Tensor,
                     templates: torch.Tensor) -> torch.Tensor:
    model = experiment.model
    images = to_model_input(images, experiment.device)
    with autocast_region(experiment.config.precision, experiment.device):
        visual = None
        if model.training:  # the DDP wrapper under torchrun, the compiled tower, or None (the model's own)
            visual = experiment.ddp_visual if experiment.ddp_visual is not None else experiment.compiled_visual
        image_features = (F.normalize(visual(images), dim=-1) if visual is not None
                          else model.encode_image(images, normalize=True))
    return image_text_loss(experiment, loss_fn, image_features, labels, templates)


def image_text_loss(experiment: Experiment, loss_fn: ClipLoss, image_features: torch.Tensor, labels: torch.Tensor,
                    templates: torch.Tensor) -> torch.Tensor:
    """The symmetric contrastive loss of normalised image features against their captions' text features."""
    text_features = caption_features(experiment, labels, templates)
    return loss_fn(image_features.float(), text_features.float(), experiment.model.logit_scale.exp())


def train_one_epoch(experiment: Experiment, optimizer, scheduler, loss_fn: ClipLoss, epoch: int,
                    progress: bool = True) -> float:
    """One epoch under the run's precision; returns its mean training loss."""
    config = experiment.config
    model = experiment.model
    model.train()
    info = dist_mod.info()
    if info.enabled:  # this rank's slice of each of the single process's global batches
        batches = dist_mod.global_batches(len(experiment.train_set), config.batch_size, seed=config.seed * 1000 + epoch)
        loader = torch.utils.data.DataLoader(
            experiment.train_set, batch_sampler=dist_mod.rank_slices(batches, info.rank, info.world_size),
            num_workers=config.num_workers, worker_init_fn=data_mod._seed_worker,
            pin_memory=experiment.device.startswith("cuda"))
        outside_ddp = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("visual.")]
    else:
        loader = data_mod.make_loader(experiment.train_set, config.batch_size, shuffle=True, drop_last=True,
                                      num_workers=config.num_workers, seed=config.seed * 1000 + epoch,
                                      pin_memory=experiment.device.startswith("cuda"))
        outside_ddp = []
    draws = _epoch_generator(config.seed, epoch, stream=1)
    losses: list[torch.Tensor] = []  # each step's loss, left on the device: read back every READ_LOSS_EVERY steps
    bars: list = []
    batches = progress_iter(loader, f"{config.encoder} epoch {epoch}/{config.epochs}", progress, bars)
    with precision_context(config.precision, experiment.device, autocast=False):
        for step, (images, labels) in enumerate(batches):
            with record_function(PHASES["forward"]):
                # captions drawn for the whole global batch, this rank's slice kept
                local = len(labels)
                templates = torch.randint(len(experiment.bank.templates), (local * info.world_size,),
                                          generator=draws)[info.rank * local:(info.rank + 1) * local]
                loss = contrastive_loss(experiment, loss_fn, images, labels, templates)
            with record_function(PHASES["backward"]):
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                dist_mod.all_reduce_grads_(outside_ddp)  # a learnt temperature / trained text tower, as DDP does
            with record_function(PHASES["optimizer"]):
                if config.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), config.grad_clip)
                optimizer.step()
                scheduler.step()
            losses.append(loss.detach())
            if (step + 1) % READ_LOSS_EVERY == 0:
                with record_function(PHASES["loss_read"]):
                    bars[0].set_postfix(loss=f"{_epoch_mean_loss(losses, experiment, epoch):.4f}")
    if not losses:
        raise ValueError(f"parameter batch_size={config.batch_size} is larger than the training set "
                         f"({len(experiment.train_set)} images) and drop_last leaves no batch")
    # every rank's loss is already the global batch's
    return dist_mod.all_reduce_mean(_epoch_mean_loss(losses, experiment, epoch))


def _epoch_mean_loss(losses: list[torch.Tensor], experiment: Experiment, epoch: int) -> float:
    """The mean of the step losses so far; NonFiniteLossError on the first that is not finite."""
    values = torch.stack(losses).tolist()  # the one wait for the device
    for step, value in enumerate(values):
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"non-finite training loss ({value}) at epoch {epoch}, step {step}; stopped. "
                f"The last good checkpoint is kept at {experiment.run_dir / rf.CHECKPOINT} "
                f"(try a lower lr, precision='fp32' or grad_clip > 0)")
    return sum(values) / len(values)


@torch.no_grad()
def validate(experiment: Experiment, loss_fn: ClipLoss, progress: bool = True) -> tuple[float, dict[str, Any]]:
    """(validation contrastive loss, zero-shot evaluation) from one pass over the validation set; captions are
    drawn with a fixed seed, the loss is the batch-size-weighted mean."""
    draws = _epoch_generator(experiment.config.seed, 0, stream=2)
    losses, sizes = [], []

    def contrastive(features: torch.Tensor, labels: torch.Tensor) -> None:
        templates = torch.randint(len(experiment.bank.templates), (len(labels),), generator=draws)
        losses.append(image_text_loss(experiment, loss_fn, features, labels, templates).item())
        sizes.append(len(labels))

    evaluation = evaluate_experiment(experiment, progress, on_features=contrastive)
    return float(np.average(losses, weights=sizes)), evaluation


def train_seeds(config: StudyConfig, resume: bool = True, progress: bool = True,
                on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> dict[int, pd.DataFrame]:
    """{seed: history} of every seed's run of ``config`` in turn, sharing data and the frozen text tower."""
    shared: dict = {}
    return {run.seed: train_run(run, resume, progress,
                                on_epoch_end=(lambda row, s=run.seed: on_epoch_end({**row, "seed": s}))
                                if on_epoch_end else None, shared=shared)
            for run in config.runs()}


def write_run_config(experiment: Experiment) -> None:
    model, config = experiment.model, experiment.config
    write_json(experiment.run_dir / "config.json", {
        **config.to_dict(), "resolved_device": experiment.device,
        "device_name": device_description(experiment.device), "versions": versions(), "ssm_backend": SSM_BACKEND,
        "data_root": str(experiment.data_root), "n_train": len(experiment.train_set),
        "n_val": len(experiment.val_set), "n_classes": len(experiment.classnames),
        "classnames": experiment.classnames,
        "train_class_counts": np.bincount(experiment.train_set.targets, minlength=len(experiment.classnames)),
        "parameters": {"image_tower": count_parameters(model.visual), "text_tower": count_parameters(model.text)},
        "timm_name": model.visual.timm_name,
        "architecture": architecture(config.encoder, config.model_size, config.image_size)})


def train_run(config: StudyConfig, resume: bool = True, progress: bool = True,
              stop_after_epoch: int | None = None,
              on_epoch_end: Callable[[dict[str, Any]], None] | None = None, shared: dict | None = None) -> pd.DataFrame:
    """Train (or resume) the run of ``config``, in deterministic mode when ``config.deterministic``; returns its
    history. ``stop_after_epoch``: stop after that epoch's checkpoint, without metrics.json. A finished run of the
    same parameters is returned as it is; their checkpoint after epoch k resumes at k + 1; a run or checkpoint of
    other parameters (``epochs`` too) or tower raises RunMismatchError and changes nothing. ``resume=False``
    deletes the folder's checkpoint and results first. Epoch seconds go to ``timings.csv``; ``on_epoch_end``
    (rank 0) gets the history row plus timings; ``shared``: see ``build_experiment``."""
    with deterministic_mode(config.deterministic):
        info = dist_mod.init_from_env(config.device)
        main = info.is_main
        progress = progress and main
        run = rf.run_dir(config)
        if main and not resume:
            rf.clear_run(run)
        dist_mod.barrier()
        finished = rf.finished_run_history(config, architecture(config.encoder, config.model_size, config.image_size))
        if finished is not None:
            logger.info("%s holds the finished run of these parameters; nothing to train", run)
            return finished
        setup_started = time.perf_counter()
        experiment = build_experiment(config, progress, shared)
        if info.enabled:
            dist_mod.local_batch_size(config.batch_size, info.world_size)  # names batch_size if not divisible
            experiment.ddp_visual = dist_mod.wrap_ddp(experiment.model.visual, experiment.device)
            loss_fn = ClipLoss(local_loss=False, gather_with_grad=True, rank=info.rank, world_size=info.world_size)
        else:
            loss_fn = ClipLoss()
            experiment.compiled_visual = training_tower(config, experiment.model.visual)
        optimizer, scheduler = make_optimizer(experiment)
        if main:
            run.mkdir(parents=True, exist_ok=True)
        saved = read_checkpoint(experiment)  # another run's checkpoint is refused before any work
        # every process evaluates the model as built (in the run's precision and in fp16) before it restores a
        # checkpoint, so that a resumed process has done what the first one did before its first epoch (the
        # checkpoint then restores weights and RNG states)
        before_training = {}
        for precision in (config.precision, "fp16") if main else ():
            built = evaluate_experiment(experiment, progress, precision=precision)
            before_training[precision] = {key: built[key] for key in rf.METRIC_KEYS}
        start_epoch, history = load_checkpoint(experiment, optimizer, scheduler, saved)
        if start_epoch:
            logger.info("resuming %s from epoch %d", run, start_epoch)
        elif main:
            rf.clear_run(run)  # nothing to resume: what an earlier start left (a config.json, no checkpoint) goes
        if main and (start_epoch < config.epochs or not (run / "config.json").is_file()):
            write_run_config(experiment)  # not when the run only needs its final files (then it is there)
        if main and not (run / rf.BEFORE_TRAINING).is_file():
            write_json(run / rf.BEFORE_TRAINING, before_training)
        timings = (pd.read_csv(run / "timings.csv").query(f"epoch <= {start_epoch}").to_dict(orient="records")
                   if main and start_epoch and (run / "timings.csv").is_file() else [])  # the epochs resumed
        setup_seconds = time.perf_counter() - setup_started
        evaluation = None
        checkpoints = CheckpointWriter()  # the checkpoint is written while the next epoch trains
        try:
            for epoch in range(start_epoch + 1, config.epochs + 1):
                started = time.perf_counter()
                timing = {"epoch": epoch, "setup_seconds": setup_seconds,
                          "train_images": len(experiment.train_set) // config.batch_size * config.batch_size}
                train_loss = train_one_epoch(experiment, optimizer, scheduler, loss_fn, epoch, progress)
                synchronize(experiment.device)
                timing["train_seconds"] = time.perf_counter() - started
                row = None
                if main:  # validation runs on rank 0 alone, over its own batches
                    t = time.perf_counter()
                    val_loss, evaluation = validate(experiment, ClipLoss(), progress)
                    timing.update(validation_seconds=time.perf_counter() - t, val_images=evaluation["n_val"])
                    row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                           "val_zeroshot_loss": evaluation["zeroshot_loss"],
                           **{k: evaluation[k] for k in rf.HISTORY_COLUMNS[4:]}}
                    history.append(row)
                    rf.write_table(run, "history.csv", history)
                    t = time.perf_counter()
                    checkpoints.save(experiment, optimizer, scheduler, epoch, history)
                    timing["checkpoint_seconds"] = time.perf_counter() - t
                    timings.append(timing)
                    rf.write_table(run, "timings.csv", timings)
                    logger.info("epoch %d: %s (%.1fs)", epoch, {k: round(v, 4) for k, v in row.items()},
                                time.perf_counter() - started)
                if info.enabled:  # the others wait here while rank 0 evaluates, then share its row
                    row = dist_mod.broadcast_object(row)
                    if not main:
                        history.append(row)
                if on_epoch_end and main:
                    on_epoch_end({**row, **timing})
                if stop_after_epoch is not None and stop_after_epoch <= epoch < config.epochs:
                    break
            if main and evaluation is not None:
                checkpoints.wait()  # the last write's error is raised here
            if main and len(history) == config.epochs:  # not stopped after an earlier epoch
                if evaluation is None:  # the checkpoint holds the last epoch but the final files are missing
                    evaluation = evaluate_experiment(experiment, progress)
                    rf.write_table(run, "history.csv", history)
                if not math.isfinite(evaluation["zeroshot_loss"]):
                    raise NonFiniteLossError(f"non-finite zero-shot loss at the end of {run}")
                root = experiment.data_root
                images = [str(Path(p).relative_to(root)) if Path(p).is_relative_to(root) else str(p)
                          for p, _ in experiment.val_files.samples]
                # clip_benchmark.json names a generated dataset by its kind, a folder by its name
                rf.write_final_results(run, config, evaluation, images,
                                       config.data if config.data.startswith("generated") else Path(root).name)
        finally:
            checkpoints.join()  # a run that fails still finishes writing its last good checkpoint
        dist_mod.barrier()
        return pd.DataFrame(history, columns=rf.HISTORY_COLUMNS)


BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def _parse_value(text: str, default: Any):
    """A command-line value as the type of the field's ``default`` (a list: comma-separated ints)."""
    if isinstance(default, list):
        return [int(v) for v in text.split(",") if v.strip()]
    if isinstance(default, bool) and text.lower() not in BOOLEANS:
        raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
    if isinstance(default, (int, float)):  # bool too
        return BOOLEANS[text.lower()] if isinstance(default, bool) else type(default)(text)
    return None if text.lower() == "none" else text


def build_parser() -> argparse.ArgumentParser:
    from ..settings.params import CommandLineParser
    from ..settings.profiles import PROFILES, help_text, user_fields

    parser = CommandLineParser(
        prog="python -m mvlip_utils.train",
        description="Train one encoder's runs, one per seed, in turn; under torchrun on several GPUs (DDP); "
                    "with --encoders and --gpus several encoders at once, each in its own process on its GPU.",
        epilog="examples:\n  python -m mvlip_utils.train --profile smoke --encoder vit --epochs 2 --seeds 0,1\n"
               "  python -m mvlip_utils.train --profile paper --encoders mambavision,swin,vit --gpus 0,1,2\n"
               "  torchrun --nproc_per_node=2 -m mvlip_utils.train --profile paper --encoder mambavision "
               "--data data/imagenet-mini",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke", choices=list(PROFILES),
                        help="the defaults every other option overrides (mvlip_utils/settings/profiles.py)")
    parser.add_argument("--no-resume", action="store_true",
                        help="train from scratch: delete the run folder's checkpoint and results first (the way "
                             "on when it holds a run of other parameters, e.g. another --epochs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--encoders", default=None, metavar="LIST",
                        help="several encoders (comma-separated), each in its own process on its --gpus entry")
    parser.add_argument("--gpus", default=None, metavar="LIST",
                        help="with --encoders: one CUDA device index per encoder ('cpu': a CPU process)")
    defaults = StudyConfig()
    for name in [n for n in user_fields(StudyConfig) if n != "profile"]:
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar="VALUE",
                            type=lambda text, d=getattr(defaults, name): _parse_value(text, d),
                            help=f"{help_text(StudyConfig, name)} (default: the profile's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line: a user error (bad parameter or data folder, missing weights, a run folder holding
    another run) ends in one ``error: ...`` line and exit status 2."""
    import sys

    from .device_share import run_pinned
    from ..models.towers import check_encoder
    from ..settings.params import USER_ERRORS, user_error_exit
    from ..settings.profiles import get_config

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("profile", "no_resume", "quiet", "encoders", "gpus") and v is not None}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if args.encoders:  # one process per encoder, each on its device
            encoders = [e for e in args.encoders.split(",") if e]
            configs = [get_config(args.profile, **{**overrides, "encoder": encoder}) for encoder in encoders]
            for config in configs:
                check_encoder(config.encoder)
            prepare_shared_inputs(configs, progress=not args.quiet)  # once, before the processes start
            devices = args.gpus.split(",") if args.gpus else ["0"] * len(encoders)
            # each child trains its one encoder: an empty --encoders (the last one given wins) ends the fan-out
            jobs = {e: [sys.executable, "-m", "mvlip_utils.train", *argv, "--encoders=", "--encoder", e]
                    for e in encoders}
            return 1 if run_pinned(jobs, devices, ".") else 0  # the failed jobs are named in the output
        config = get_config(args.profile, **overrides)
        check_encoder(config.encoder)  # a paper tower or a timm image model (the error names the closest)
        prepare_environment(config.deterministic)  # before anything touches CUDA (the cuBLAS workspace)
        info = dist_mod.init_from_env(config.device)
        try:
            for seed, history in train_seeds(config, resume=not args.no_resume, progress=not args.quiet).items():
                if info.is_main:
                    print(history.to_string(index=False))
                    print(f"run folder: {rf.run_dir(config.replace(seed=seed))}")
        finally:
            dist_mod.destroy()
    except USER_ERRORS + (WeightsUnavailableError,) as exc:
        return user_error_exit(exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
