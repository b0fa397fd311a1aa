"""The training loop, readable top to bottom: one epoch at a time, one validation pass, a checkpoint after
each epoch, exact resume; ``train_run`` runs a whole run and ``python -m mvlip_utils.train`` is its command
line. What a run is built from is ``experiment``'s; what its folder holds, ``run_folder``'s.

Protocol (the paper's, as the authors' code ran it): AdamW(lr, weight_decay) over the image tower and its projection
(the text tower is frozen unless ``train_text``; the temperature is fixed at 0.07 unless
``learn_temperature``), cosine annealing stepped every batch over all steps, grad-norm clip, batch 32 with
drop_last, symmetric contrastive loss (open_clip's ``ClipLoss``). Each training sample gets one of the 10
templates at random; captions' text features come from the ``PromptBank``.

Several GPUs: under torchrun (``torchrun --nproc_per_node=N -m mvlip_utils.train ...``) the image tower is
wrapped in DDP and the loss is computed over the global batch (``mvlip_utils.train.distributed`` says how this
stays identical to one process); ``batch_size`` is the global batch, rank 0 alone evaluates and writes.

Per epoch the run folder gets a row in ``history.csv`` and ``timings.csv`` and an atomically written
``checkpoint.pt`` (``run_folder``). Shuffling and caption draws are seeded per epoch, so a resumed run ends
with the same metrics as an uninterrupted one. On a GPU that holds bit for bit only with ``deterministic=True``
(``reproducibility``): PyTorch's default kernels may add in another order from one run to the next.
"""

from __future__ import annotations

import argparse
import logging
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
from . import distributed as dist_mod
from . import results
from .evaluate import progress_iter, synchronize, to_model_input
from .experiment import (Experiment, build_experiment, caption_features, evaluate_experiment, prepare_shared_inputs,
                         make_optimizer, training_tower)
from ..settings.precision import autocast_region, precision_context
from ..settings.profiles import StudyConfig
from ..settings.reproducibility import deterministic_mode, prepare_environment
from .results import CHECKPOINT, clear_run, read_timings
from .run_folder import (CheckpointWriter, finished_run_history, load_checkpoint, write_final_results,
                         write_run_config)
from ..models.towers import WeightsUnavailableError

logger = logging.getLogger("mvlip_utils.train")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# Reading a loss back (``loss.item()``) makes the host wait until the device has finished the step, so the
# next step's kernels are launched only then and the GPU idles meanwhile. The loop keeps the losses on the
# device and reads them (the progress bar's running mean, the finite check) every this many steps and at
# the end of the epoch; a non-finite loss is still reported with its step, at most this many steps later.
# The history is the same either way.
READ_LOSS_EVERY = 50

# The names of a training step's phases in a torch.profiler trace (``step_profile`` reads them back).
PHASES = {"forward": "mvlip.forward", "backward": "mvlip.backward", "optimizer": "mvlip.optimizer",
          "loss_read": "mvlip.loss_read"}


def _epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    generator = torch.Generator()
    generator.manual_seed(seed * 1_000_003 + epoch * 101 + stream)
    return generator


def contrastive_loss(experiment: Experiment, loss_fn: ClipLoss, images: torch.Tensor, labels: torch.Tensor,
                     templates: torch.Tensor) -> torch.Tensor:
    model = experiment.model
    images = to_model_input(images, experiment.device)
    with autocast_region(experiment.config.precision, experiment.device):
        visual = training_visual(experiment) if model.training else None
        image_features = (F.normalize(visual(images), dim=-1) if visual is not None
                          else model.encode_image(images, normalize=True))
    return image_text_loss(experiment, loss_fn, image_features, labels, templates)


def image_text_loss(experiment: Experiment, loss_fn: ClipLoss, image_features: torch.Tensor, labels: torch.Tensor,
                    templates: torch.Tensor) -> torch.Tensor:
    """The symmetric contrastive loss of normalised image features against their captions' text features."""
    text_features = caption_features(experiment, labels, templates)
    return loss_fn(image_features.float(), text_features.float(), experiment.model.logit_scale.exp())


def training_visual(experiment: Experiment):
    """The image tower that training calls: the DDP wrapper under torchrun (its gradients are all-reduced),
    the compiled tower (train_step compiled or graphed), else None (the model's own)."""
    return experiment.ddp_visual if experiment.ddp_visual is not None else experiment.compiled_visual


def train_one_epoch(experiment: Experiment, optimizer, scheduler, loss_fn: ClipLoss, epoch: int,
                    progress: bool = True, timing: dict[str, float] | None = None) -> float:
    """One epoch under the run's precision (the TF32 mode holds for the backward pass too); returns its mean
    training loss. ``timing``, if given, gets ``loader_start_seconds``: how long the epoch waited for its first
    batch (the DataLoader's workers starting), time in which the GPU has nothing to do."""
    with precision_context(experiment.config.precision, experiment.device, autocast=False):
        return _train_one_epoch(experiment, optimizer, scheduler, loss_fn, epoch, progress,
                                timing if timing is not None else {})


def _train_one_epoch(experiment: Experiment, optimizer, scheduler, loss_fn: ClipLoss, epoch: int,
                     progress: bool, timing: dict[str, float]) -> float:
    config = experiment.config
    model = experiment.model
    model.train()
    info = experiment.dist
    if info.enabled:  # this rank's slice of each of the single process's global batches
        batches = dist_mod.global_batches(len(experiment.train_set), config.batch_size, seed=config.seed * 1000 + epoch)
        loader = torch.utils.data.DataLoader(
            experiment.train_set, batch_sampler=dist_mod.RankSliceSampler(batches, info.rank, info.world_size),
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
    started = time.perf_counter()
    for step, (images, labels) in enumerate(batches):
        if step == 0:
            timing["loader_start_seconds"] = time.perf_counter() - started
        with record_function(PHASES["forward"]):
            # captions: drawn for the whole global batch (as one process does), this rank's slice kept
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
    """The mean of the step losses so far (summed in Python floats in step order, as reading each step's
    ``loss.item()`` did), after checking that every one is finite; the first that is not stops the run."""
    values = torch.stack(losses).tolist()  # the one wait for the device
    for step, value in enumerate(values):
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"non-finite training loss ({value}) at epoch {epoch}, step {step}; stopped. "
                f"The last good checkpoint is kept at {experiment.run_dir / CHECKPOINT} "
                f"(try a lower lr, precision='fp32' or grad_clip > 0)")
    return sum(values) / len(values)


@torch.no_grad()
def validate(experiment: Experiment, loss_fn: ClipLoss, progress: bool = True) -> tuple[float, dict[str, Any]]:
    """One pass over the validation set giving both the validation contrastive loss (captions drawn with a
    fixed seed, the same every epoch; the mean over batches weighted by their size) and the zero-shot
    evaluation, from the same image features."""
    draws = _epoch_generator(experiment.config.seed, 0, stream=2)
    losses, sizes = [], []

    def contrastive(features: torch.Tensor, labels: torch.Tensor) -> None:
        templates = torch.randint(len(experiment.bank.templates), (len(labels),), generator=draws)
        losses.append(image_text_loss(experiment, loss_fn, features, labels, templates).item())
        sizes.append(len(labels))

    evaluation = evaluate_experiment(experiment, progress, on_features=contrastive)
    return float(np.average(losses, weights=sizes)), evaluation


def train_run(config: StudyConfig, resume: bool = True, progress: bool = True,
              stop_after_epoch: int | None = None,
              on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> pd.DataFrame:
    """Train (or resume) the run of ``config`` (``_train_run``), in deterministic mode when
    ``config.deterministic`` (``reproducibility.deterministic_mode``: the previous settings are restored after
    the run; an operation without a deterministic implementation stops it with an error that names it)."""
    with deterministic_mode(config.deterministic):
        return _train_run(config, resume, progress, stop_after_epoch, on_epoch_end)


def _train_run(config: StudyConfig, resume: bool = True, progress: bool = True,
               stop_after_epoch: int | None = None,
               on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> pd.DataFrame:
    """Train (or resume) the run of ``config``; returns its history. ``stop_after_epoch`` ends early
    (as an interruption would) after that epoch's checkpoint, without writing metrics.json.

    What the run folder already holds decides (``resume=True``):
    - a finished run of the same parameters: its history is returned as it is; nothing is built, trained
      or written;
    - a checkpoint of the same parameters after epoch k: training resumes at epoch k + 1 (k = epochs: the
      run was interrupted before its final files, which are now evaluated and written);
    - a finished run or a checkpoint made with other parameters, ``epochs`` included, or another tower
      architecture: RunMismatchError, nothing changed. There is deliberately no way to extend a run to more
      epochs: the cosine schedule spans the epochs of the run, so an extended run would not be the run
      trained for the new number from the start (its learning rate would climb again after the old end).
    ``resume=False`` deletes the folder's checkpoint and results first and trains from scratch.

    Under torchrun (WORLD_SIZE > 1) every rank calls this; the process group is started if it is not yet.
    Each epoch's seconds go to the run's ``timings.csv`` (``results.TIMING_COLUMNS``: training, the one
    validation pass, the checkpoint write, the set-up before the first epoch of this process, peak GPU
    memory); ``on_epoch_end`` (rank 0 only) gets the history row plus that epoch's timings."""
    info = dist_mod.init_from_env(config.device)
    main = info.is_main
    progress = progress and main
    run = results.run_dir(config)
    if main and not resume:
        clear_run(run)
    dist_mod.barrier()
    finished = finished_run_history(config)
    if finished is not None:
        logger.info("%s holds the finished run of these parameters; nothing to train", run)
        return finished
    setup_started = time.perf_counter()
    experiment = build_experiment(config, progress)
    if info.enabled:
        dist_mod.local_batch_size(config.batch_size, info.world_size)  # names batch_size if not divisible
        experiment.ddp_visual = dist_mod.wrap_ddp(experiment.model.visual, experiment.device)
        loss_fn = ClipLoss(local_loss=False, gather_with_grad=True, rank=info.rank, world_size=info.world_size)
    else:
        loss_fn = ClipLoss()
        experiment.compiled_visual = training_tower(config, experiment.model.visual)
    eval_loss_fn = ClipLoss()  # validation runs on rank 0 alone, over its own batches
    optimizer, scheduler = make_optimizer(experiment)
    if main:
        run.mkdir(parents=True, exist_ok=True)
    start_epoch, history = load_checkpoint(experiment, optimizer, scheduler)
    if start_epoch:
        logger.info("resuming %s from epoch %d", run, start_epoch)
    elif main:
        clear_run(run)  # nothing to resume: what an earlier start left (a config.json, no checkpoint) goes
    if main and (start_epoch < config.epochs or not (run / "config.json").is_file()):
        write_run_config(experiment)  # not when the run only needs its final files (then it is there)
    timings = read_timings(run, start_epoch) if main else []
    setup_seconds = time.perf_counter() - setup_started
    evaluation = None
    steps_per_epoch = len(experiment.train_set) // config.batch_size
    checkpoints = CheckpointWriter()  # the checkpoint is written while the next epoch trains
    try:
        for epoch in range(start_epoch + 1, config.epochs + 1):
            if experiment.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(experiment.device)
            started = time.perf_counter()
            epoch_timing: dict[str, float] = {}
            train_loss = train_one_epoch(experiment, optimizer, scheduler, loss_fn, epoch, progress, epoch_timing)
            synchronize(experiment.device)
            train_seconds = time.perf_counter() - started
            row = timing = None
            if main:
                t = time.perf_counter()
                val_loss, evaluation = validate(experiment, eval_loss_fn, progress)
                validation_seconds = time.perf_counter() - t
                row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                       "val_zeroshot_loss": evaluation["zeroshot_loss"],
                       **{k: evaluation[k] for k in results.HISTORY_COLUMNS[4:]}}
                history.append(row)
                results.write_history(run, history)
                t = time.perf_counter()
                previous = checkpoints.save(experiment, optimizer, scheduler, epoch, history)
                if timings and previous is not None:
                    timings[-1]["checkpoint_write_seconds"] = previous  # the last epoch's write, now known
                timing = {"epoch": epoch, "train_seconds": train_seconds,
                          "train_images": steps_per_epoch * config.batch_size,
                          "validation_seconds": validation_seconds, "val_images": evaluation["n_val"],
                          "checkpoint_seconds": time.perf_counter() - t, "checkpoint_write_seconds": math.nan,
                          "loader_start_seconds": epoch_timing.get("loader_start_seconds", math.nan),
                          "epoch_seconds": time.perf_counter() - started,
                          "setup_seconds": setup_seconds, "world_size": info.world_size,
                          "peak_memory_gib": (torch.cuda.max_memory_allocated(experiment.device) / 2**30
                                              if experiment.device.startswith("cuda") else math.nan)}
                timings.append(timing)
                results.write_timings(run, timings)
                logger.info("epoch %d: %s (%.1fs)", epoch, {k: round(v, 4) for k, v in row.items()},
                            time.perf_counter() - started)
            if info.enabled:  # the others wait here while rank 0 evaluates, then share its row
                row = dist_mod.broadcast_object(row)
                if not main:
                    history.append(row)
            if on_epoch_end and main:
                on_epoch_end({**row, **timing})
            if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < config.epochs:
                _finish_checkpoints(checkpoints, timings, run)
                return pd.DataFrame(history, columns=results.HISTORY_COLUMNS)
        if main:
            _finish_checkpoints(checkpoints, timings, run)
            if evaluation is None:  # the checkpoint holds the last epoch but the final files are missing
                evaluation = evaluate_experiment(experiment, progress)
                results.write_history(run, history)
            if not math.isfinite(evaluation["zeroshot_loss"]):
                raise NonFiniteLossError(f"non-finite zero-shot loss at the end of {run}")
            write_final_results(experiment, evaluation, len(history))
    finally:
        checkpoints.join()  # a run that fails still finishes writing its last good checkpoint
    dist_mod.barrier()
    return pd.DataFrame(history, columns=results.HISTORY_COLUMNS)


def _finish_checkpoints(checkpoints: CheckpointWriter, timings: list[dict[str, Any]], run) -> None:
    """Wait for the last checkpoint write (raising its error) and record its seconds in the last timings row."""
    seconds = checkpoints.wait()
    if timings and seconds is not None and math.isnan(timings[-1].get("checkpoint_write_seconds", math.nan)):
        timings[-1]["checkpoint_write_seconds"] = seconds
        results.write_timings(run, timings)


# ------------------------------------------------------------------------------------------- CLI
def _parse_value(text: str, default: Any):
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
    if isinstance(default, int):
        return int(text)
    if isinstance(default, float):
        return float(text)
    return None if text.lower() == "none" else text


def build_parser() -> argparse.ArgumentParser:
    import dataclasses

    from ..settings.params import CommandLineParser
    from ..settings.profiles import PROFILES, help_text

    parser = CommandLineParser(
        prog="python -m mvlip_utils.train",
        description="Train one run (one encoder) of the study; under torchrun on several GPUs (DDP); with "
                    "--encoders and --gpus several encoders at once, each in its own process on its GPU.",
        epilog="examples:\n  python -m mvlip_utils.train --profile smoke --encoder vit --epochs 2\n"
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
    for field in dataclasses.fields(StudyConfig):
        if field.name == "profile":
            continue
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, default=None, metavar="VALUE",
                            type=lambda text, d=field.default: _parse_value(text, d),
                            help=f"{help_text(StudyConfig, field.name)} (default: the profile's)")
    return parser


CLI_ONLY = ("profile", "no_resume", "quiet", "encoders", "gpus")


def main(argv: list[str] | None = None) -> int:
    """The command line: user errors (a bad parameter, a missing or malformed data folder, weights that
    cannot be had, a run folder that holds another run) end in one ``error: ...`` line and exit status 2."""
    import sys

    from .launch import run_pinned
    from ..models.timm_towers import check_encoder
    from ..settings.params import USER_ERRORS, user_error_exit
    from ..settings.profiles import get_config

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in CLI_ONLY and v is not None}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        if args.encoders:  # one process per encoder, each on its device
            encoders = [e for e in args.encoders.split(",") if e]
            configs = [get_config(args.profile, **{**overrides, "encoder": encoder}) for encoder in encoders]
            for config in configs:
                check_encoder(config.encoder)
            prepare_shared_inputs(configs, progress=not args.quiet)  # once, before the processes start
            devices = args.gpus.split(",") if args.gpus else ["0"] * len(encoders)
            rest = _without(argv, ("--encoders", "--gpus"))
            jobs = {e: [sys.executable, "-m", "mvlip_utils.train", *rest, "--encoder", e] for e in encoders}
            failed = run_pinned(jobs, devices, ".")
            return 1 if failed else 0
        config = get_config(args.profile, **overrides)
        check_encoder(config.encoder)  # a paper tower or a timm image model (the error names the closest)
        prepare_environment(config.deterministic)  # before anything touches CUDA (the cuBLAS workspace)
        info = dist_mod.init_from_env(config.device)
        try:
            history = train_run(config, resume=not args.no_resume, progress=not args.quiet)
            if info.is_main:
                print(history.to_string(index=False))
                print(f"run folder: {results.run_dir(config)}")
        finally:
            dist_mod.destroy()
    except USER_ERRORS + (WeightsUnavailableError,) as exc:
        return user_error_exit(exc)
    return 0


def _without(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """``argv`` without ``options`` and their values (``--opt value`` or ``--opt=value``)."""
    out, skip = [], False
    for arg in argv:
        if skip or arg in options or any(arg.startswith(f"{o}=") for o in options):
            skip = arg in options
            continue
        out.append(arg)
    return out


if __name__ == "__main__":
    raise SystemExit(main())
