"""The training loop: one epoch at a time, a checkpoint after each, exact resume.

Protocol (the paper's, FACTS.md): AdamW(lr, weight_decay) over the image tower and its projection
(the text tower is frozen unless ``train_text``; the temperature is fixed at 0.07 unless
``learn_temperature``), cosine annealing stepped every batch over all steps, grad-norm clip, batch 32 with
drop_last, symmetric contrastive loss (open_clip's ``ClipLoss``). Each training sample gets one of the 10
templates at random; captions' text features come from the ``PromptBank``.

Several GPUs: under torchrun (``torchrun --nproc_per_node=N -m mvlip_utils.train ...``) the image tower is
wrapped in DDP and the loss is computed over the global batch (``mvlip_utils.distributed`` says how this
stays identical to one process); ``batch_size`` is the global batch, rank 0 alone evaluates and writes.

Per epoch the run folder gets a row in ``history.csv`` and an atomically written ``checkpoint.pt``
(model, optimiser, scheduler, RNG states, epoch, configuration, history). Shuffling and caption draws are
seeded per epoch, so a resumed run ends with the same metrics as an uninterrupted one.

A run folder holds one run and says which: a finished run or a checkpoint made with other parameters
(``epochs`` included) or another tower architecture is refused with a ``RunMismatchError``, never reused,
extended or relabelled; a finished run of the same parameters is returned as it is, nothing rewritten. The checkpoint holds
tensors and plain Python values only, and is read back with ``weights_only=True`` (``weights.load_torch_file``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from open_clip import ClipLoss

from . import data as data_mod
from . import distributed as dist_mod
from . import generated
from . import results
from .benchmark import make_adamw
from .evaluate import progress_iter, synchronize, to_model_input, zero_shot_evaluate
from .model import MVLIP, PromptBank, create_text_tower
from .precision import autocast_region, precision_context
from .profiles import StudyConfig, changed_parameters, resolve_device
from .towers import SSM_BACKEND, architecture, count_parameters, create_image_tower
from .weights import TRUST_ENV, load_torch_file

logger = logging.getLogger("mvlip_utils.train")

CHECKPOINT = "checkpoint.pt"

# How to go on when a run checkpoint needs more than tensors and plain values to load.
CHECKPOINT_REMEDY = (
    "To go on: start the run again (train_run(..., resume=False); the study's --force) or use another "
    "results_dir; or, if this is a checkpoint the study wrote for you (versions before weights-only loading "
    f"stored numpy's RNG state), resume it with trust_pickled_weights=True (or {TRUST_ENV}=1).")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


WAYS_ON = ("To train this run from scratch in that folder, pass resume=False (train_run(..., resume=False), "
           "the 02_train notebook's `-p resume False`, the train CLI's --no-resume, the study's --force); "
           "to keep the run that is there, use another results_dir.")


class RunMismatchError(ValueError):
    """The run folder holds another run than the one asked for: a finished run or a checkpoint made with
    other parameters (``epochs`` included) or another tower architecture, or files that disagree. Nothing
    in the folder was changed. ``run_dir``, ``holds`` (e.g. "a finished 6-epoch run") and ``changed``
    ({name: (saved, now)}) say what was found; the message also names the ways on (``WAYS_ON``)."""

    def __init__(self, run_dir: Path, holds: str, reason: str, changed: dict[str, Any] | None = None):
        self.run_dir, self.holds, self.changed = Path(run_dir), holds, dict(changed or {})
        extend = (" A run is never extended to more epochs (nor cut to fewer): its cosine schedule would not be "
                  "that of a run trained for the new number from the start." if "epochs" in self.changed else "")
        super().__init__(f"run folder {self.run_dir} holds {holds}, {reason}; it is not reused, extended or "
                         f"relabelled.{extend} {WAYS_ON}")

    @classmethod
    def other_parameters(cls, run_dir: Path, holds: str, changed: dict[str, Any]) -> RunMismatchError:
        listed = ", ".join(f"{name} {saved!r} (saved) vs {now!r} (now)" for name, (saved, now) in changed.items())
        return cls(run_dir, holds, f"made with other parameters: {listed}", changed)

    @classmethod
    def other_tower(cls, run_dir: Path, holds: str, encoder: str, saved: Any, now: Any) -> RunMismatchError:
        return cls(run_dir, holds, f"made for another {encoder} tower ({saved}) than the one built now ({now})",
                   {"architecture": (saved, now)})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def dataset_root(config: StudyConfig, progress: bool = True) -> Path:
    """The folder with train/ and val/: a generated dataset (written once under ``data_dir``), or the user's.

    A generated dataset's folder is named by everything that decides its images, the generator's version
    too: a new generator writes a new folder instead of redrawing the images that finished runs (their
    predictions.csv) point at."""
    if config.data == "generated":
        name = (f"generated-c{config.generated_classes}-n{config.generated_train_per_class}"
                f"-v{config.generated_val_per_class}-s{config.image_size}-seed{config.seed}"
                f"-gen{generated.GENERATOR_VERSION}")
        return generated.make_generated_dataset(
            Path(config.data_dir) / name, n_classes=config.generated_classes,
            train_per_class=config.generated_train_per_class, val_per_class=config.generated_val_per_class,
            image_size=config.image_size, seed=config.seed, progress=progress)
    if config.data == "generated-imagenet":
        name = (f"generated-imagenet-c{config.generated_classes}-n{config.generated_train_per_class}"
                f"-v{config.generated_val_per_class}-seed{config.seed}-gen{generated.IMAGENET_LIKE_VERSION}")
        return generated.make_imagenet_like_dataset(
            Path(config.data_dir) / name, n_classes=config.generated_classes,
            train_per_class=config.generated_train_per_class, val_per_class=config.generated_val_per_class,
            seed=config.seed, progress=progress)
    root = Path(config.data)
    if not root.is_dir():
        raise FileNotFoundError(f"parameter data={config.data!r}: no such folder (expected a folder with "
                                f"train/<class>/ and val/<class>/, or data='generated' / 'generated-imagenet' "
                                f"for a generated dataset)")
    return root


@dataclass
class Experiment:
    """Everything a run needs, built from its configuration."""

    config: StudyConfig
    device: str
    model: MVLIP
    bank: PromptBank
    train_set: Any
    val_set: Any
    classnames: list[str]
    data_root: Path
    val_files: Any = None  # the validation split as image files (val_set may be its uint8 cache)
    ddp_visual: Any = None  # the DDP-wrapped image tower under torchrun (trains); None in one process
    compiled_visual: Any = None  # torch.compile of the image tower for training (train_step="compiled")

    @property
    def dist(self) -> dist_mod.DistInfo:
        return dist_mod.info()

    @property
    def run_dir(self) -> Path:
        return results.run_dir(self.config)


def build_experiment(config: StudyConfig, progress: bool = True) -> Experiment:
    device = dist_mod.device_for_rank(resolve_device(config.device))
    with dist_mod.main_first():  # rank 0 writes the generated dataset, the others then find it there
        root = dataset_root(config, progress)
    transform = data_mod.clip_transform(config.image_size)
    train_set, val_set, classnames = data_mod.load_splits(root, transform=transform, image_size=config.image_size,
                                                          progress=progress)
    val_files = val_set
    if config.data_cache:
        train_set, val_set = (cached_split(config, root, split, dataset, progress)
                              for split, dataset in (("train", train_set), ("val", val_set)))
    seed_everything(config.seed)  # the towers' random initialisation is part of the run's definition
    image_tower = create_image_tower(config.encoder, size=config.model_size, pretrained=config.pretrained,
                                     weights_path=config.image_weights, image_size=config.image_size,
                                     trust_pickled_weights=config.trust_pickled_weights)
    text_tower = create_text_tower(pretrained=config.pretrained, weights_path=config.text_weights,
                                   trust_pickled_weights=config.trust_pickled_weights)
    model = MVLIP(image_tower, text_tower, temperature=config.temperature,
                  learn_temperature=config.learn_temperature, train_text=config.train_text).to(device)
    bank = PromptBank(model.text, classnames, data_mod.TEMPLATES, device=device, progress=progress)
    return Experiment(config, device, model, bank, train_set, val_set, list(classnames), Path(root), val_files)


def cached_split(config: StudyConfig, root: Path, split: str, dataset, progress: bool = True):
    """``dataset`` served from its uint8 cache under ``data_dir/cache`` (built once, on rank 0)."""
    key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:8]
    path = Path(config.data_dir) / "cache" / f"{Path(root).name}-{key}-{split}-{config.image_size}px.pt"
    with dist_mod.main_first():
        if dist_mod.is_main():
            data_mod.cache_preprocessed(dataset, path, config.image_size, num_workers=config.num_workers,
                                        progress=progress)
    return data_mod.CachedImageDataset(path)


def sample_paths(dataset) -> list[str]:
    return [path for path, _ in dataset.samples] if hasattr(dataset, "samples") else list(dataset.paths)


def caption_features(experiment: Experiment, labels: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """Normalised text features of the captions (labels, template indices): cached, or computed when the
    text tower is trained."""
    if experiment.config.train_text:
        tokens = experiment.model.text.tokenizer(experiment.bank.captions(labels, templates)).to(experiment.device)
        return experiment.model.encode_text(tokens, normalize=True)
    return experiment.bank.caption_features(labels, templates)


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
    the compiled tower (train_step="compiled"), else None (the model's own)."""
    return experiment.ddp_visual if experiment.ddp_visual is not None else experiment.compiled_visual


def train_one_epoch(experiment: Experiment, optimizer, scheduler, loss_fn: ClipLoss, epoch: int,
                    progress: bool = True) -> float:
    """One epoch under the run's precision (the TF32 mode holds for the backward pass too)."""
    with precision_context(experiment.config.precision, experiment.device, autocast=False):
        return _train_one_epoch(experiment, optimizer, scheduler, loss_fn, epoch, progress)


def _train_one_epoch(experiment: Experiment, optimizer, scheduler, loss_fn: ClipLoss, epoch: int,
                     progress: bool) -> float:
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
    total, steps = 0.0, 0
    bars: list = []
    batches = progress_iter(loader, f"{config.encoder} epoch {epoch}/{config.epochs}", progress, bars)
    for step, (images, labels) in enumerate(batches):
        # captions: drawn for the whole global batch (as one process does), this rank's slice kept
        local = len(labels)
        templates = torch.randint(len(experiment.bank.templates), (local * info.world_size,),
                                  generator=draws)[info.rank * local:(info.rank + 1) * local]
        loss = contrastive_loss(experiment, loss_fn, images, labels, templates)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at epoch {epoch}, step {step}; stopped. "
                f"The last good checkpoint is kept at {experiment.run_dir / CHECKPOINT} "
                f"(try a lower lr, precision='fp32' or grad_clip > 0)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        dist_mod.all_reduce_grads_(outside_ddp)  # a learnt temperature / trained text tower, as DDP does
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        total += loss.item()
        steps += 1
        bars[0].set_postfix(loss=f"{total / steps:.4f}")
    if steps == 0:
        raise ValueError(f"parameter batch_size={config.batch_size} is larger than the training set "
                         f"({len(experiment.train_set)} images) and drop_last leaves no batch")
    return dist_mod.all_reduce_mean(total / steps)  # every rank's loss is already the global batch's


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


def eval_loader(experiment: Experiment, source: str = "run", num_workers: int | None = None):
    """The validation loader: ``source`` "run" (the run's val_set: its uint8 cache when data_cache, else
    the files), "files" (JPEG/PNG decoding in the workers, the paper's way) or "cache" (the uint8 cache,
    built once if the run does not use it); ``num_workers`` defaults to the run's."""
    config = experiment.config
    if source == "run":
        dataset = experiment.val_set
    elif source == "files":
        dataset = experiment.val_files
    elif source == "cache":
        dataset = (experiment.val_set if isinstance(experiment.val_set, data_mod.CachedImageDataset) else
                   cached_split(config, experiment.data_root, "val", experiment.val_files, progress=False))
    else:
        raise ValueError(f"parameter source={source!r} is not one of ['run', 'files', 'cache']")
    return data_mod.make_loader(dataset, config.eval_batch_size, shuffle=False, drop_last=False,
                                num_workers=config.num_workers if num_workers is None else num_workers,
                                seed=config.seed, pin_memory=experiment.device.startswith("cuda"))


def evaluate_experiment(experiment: Experiment, progress: bool = True, loader=None,
                        on_features=None) -> dict[str, Any]:
    """Zero-shot evaluation of the run's model over the validation set (``loader``: ``eval_loader``'s;
    ``on_features``: see ``evaluate.zero_shot_logits``)."""
    loader = loader if loader is not None else eval_loader(experiment)
    return zero_shot_evaluate(experiment.model, loader, experiment.bank.classifier, experiment.classnames,
                              experiment.device, experiment.config.precision, progress, on_features=on_features)


def compile_tower(tower: torch.nn.Module):
    """``torch.compile`` of the image tower for training. MambaVision's blocks break the graph at the
    selective scan and differ in their drop-path rate, which dynamo guards on: one recompile per block,
    so its recompile limit is raised to the tower's number of modules (the default of 8 would leave most
    blocks eager)."""
    import torch._dynamo
    import torch._inductor.config

    blocks = sum(1 for _ in tower.modules())
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name):
            setattr(config, name, max(getattr(config, name), blocks))
    # random ops (drop path) draw from PyTorch's own generator, as in eager mode, so that the compiled step
    # trains on the same stochastic-depth masks (inductor's own random numbers would differ)
    torch._inductor.config.fallback_random = True
    return torch.compile(tower)


def make_optimizer(experiment: Experiment):
    """AdamW over the trainable parameters (``train_step``: PyTorch's default implementation, or fused) and
    the cosine schedule over every step of the run."""
    config = experiment.config
    optimizer = make_adamw(experiment.model.trainable_parameters(), config.lr, config.weight_decay,
                           "foreach" if config.train_step == "eager" else "fused")
    steps_per_epoch = len(experiment.train_set) // config.batch_size
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs * steps_per_epoch))
    return optimizer, scheduler


def _model_state(model: MVLIP, train_text: bool) -> dict[str, torch.Tensor]:
    # the frozen text tower is rebuilt from its weights (or the seed), so it stays out of the checkpoint
    return {k: v for k, v in model.state_dict().items() if train_text or not k.startswith("text.")}


def _numpy_rng_state() -> dict[str, Any]:
    """numpy's global RNG state as plain values and a tensor (np.random.get_state() holds an ndarray)."""
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {"bit_generator": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def _set_numpy_rng_state(state: dict[str, Any] | tuple) -> None:
    """Restore ``_numpy_rng_state()``; a tuple is np.random.get_state() as checkpoints before it stored it."""
    if isinstance(state, dict):
        state = (state["bit_generator"], state["key"].numpy().astype(np.uint32), state["pos"],
                 state["has_gauss"], state["cached_gaussian"])
    np.random.set_state(state)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (exactly); anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def save_checkpoint(experiment: Experiment, optimizer, scheduler, epoch: int, history: list[dict]) -> Path:
    """Write the run's state after ``epoch``: tensors and plain Python values only, so that it loads with
    ``weights_only=True`` and no allowed types."""
    state = {
        "epoch": epoch,
        "model": _model_state(experiment.model, experiment.config.train_text),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "config": experiment.config.to_dict(),
        "architecture": _architecture(experiment.config),
        "history": [{k: _plain(v) for k, v in row.items()} for row in history],
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = experiment.run_dir / CHECKPOINT
    results.atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(experiment: Experiment, optimizer, scheduler) -> tuple[int, list[dict]]:
    """Restore a run from its checkpoint (read with weights_only=True: a checkpoint that needs more is refused
    unless trust_pickled_weights); returns (last complete epoch, history). (0, []) when none.

    A checkpoint of other parameters (``epochs`` too) or of another tower architecture raises
    RunMismatchError."""
    path = experiment.run_dir / CHECKPOINT
    if not path.is_file():
        return 0, []
    state = load_torch_file(path, trust=experiment.config.trust_pickled_weights, what="run checkpoint",
                            remedy=CHECKPOINT_REMEDY)
    holds = f"a checkpoint after epoch {state['epoch']} of a {state['config'].get('epochs')}-epoch run"
    changed = changed_parameters(state["config"], experiment.config)
    if changed:
        raise RunMismatchError.other_parameters(experiment.run_dir, holds, changed)
    saved_tower, tower = state.get("architecture"), _architecture(experiment.config)
    if saved_tower is not None and saved_tower != tower:
        raise RunMismatchError.other_tower(experiment.run_dir, holds, experiment.config.encoder, saved_tower, tower)
    try:
        missing, unexpected = experiment.model.load_state_dict(state["model"], strict=False)
    except RuntimeError as exc:  # shapes differ: a checkpoint of another architecture
        raise ValueError(f"checkpoint {path} does not fit the model built now ({exc}); use another "
                         f"results_dir, or start again (the study's --force)") from exc
    if unexpected or any(not k.startswith("text.") for k in missing):
        raise ValueError(f"checkpoint {path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    _set_numpy_rng_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["epoch"]), list(state["history"])


def _architecture(config: StudyConfig) -> dict[str, Any]:
    return architecture(config.encoder, config.model_size, config.image_size)


def write_run_config(experiment: Experiment) -> None:
    model = experiment.model
    results.write_json(experiment.run_dir / "config.json", {
        **experiment.config.to_dict(),
        "resolved_device": experiment.device,
        "device_name": results.device_description(experiment.device),
        "versions": results.versions(),
        "ssm_backend": SSM_BACKEND,
        "data_root": str(experiment.data_root),
        "n_train": len(experiment.train_set),
        "n_val": len(experiment.val_set),
        "n_classes": len(experiment.classnames),
        "classnames": experiment.classnames,
        "parameters": {"image_tower": count_parameters(model.visual), "text_tower": count_parameters(model.text)},
        "timm_name": model.visual.timm_name,
        "architecture": _architecture(experiment.config),
    })


def write_final_results(experiment: Experiment, evaluation: dict[str, Any], epochs: int) -> dict[str, Any]:
    run = experiment.run_dir
    metrics = {key: evaluation[key] for key in results.METRIC_KEYS if key in evaluation}
    metrics.update(epochs=epochs, zeroshot_loss=evaluation["zeroshot_loss"],
                   eval_images_per_s=evaluation["images_per_s"])
    pd.DataFrame(evaluation["per_class"]).to_csv(run / "per_class.csv", index=False)
    pd.DataFrame(evaluation["confusion"], index=experiment.classnames,
                 columns=experiment.classnames).to_csv(run / "confusion.csv")
    pd.DataFrame({"label": evaluation["labels"], "prediction": evaluation["predictions"],
                  "path": sample_paths(experiment.val_set)}
                 ).to_csv(run / "predictions.csv", index=False)
    results.write_json(run / "metrics.json", metrics)
    return metrics


def finished_run_history(config: StudyConfig) -> pd.DataFrame | None:
    """The history of the finished run in the run folder of ``config`` when it is that run: the same
    parameters (``epochs`` included; profiles.RUN_IRRELEVANT aside), the same tower architecture and files
    that agree (results.check_run_consistency). None when the folder holds no finished run (no
    metrics.json); RunMismatchError when it holds another one. Reads only."""
    run = results.run_dir(config)
    if not results.is_finished(run):
        return None
    holds = _finished_description(run)
    problems = results.check_run_consistency(run)
    if problems:
        raise RunMismatchError(run, holds, "whose files disagree: " + "; ".join(problems))
    saved = results.load_config(run)
    changed = changed_parameters(saved, config)
    if changed:
        raise RunMismatchError.other_parameters(run, holds, changed)
    saved_tower, tower = saved.get("architecture"), _architecture(config)
    if saved_tower != tower:
        raise RunMismatchError.other_tower(run, holds, config.encoder, saved_tower, tower)
    return results.load_history(run)


def _finished_description(run: Path) -> str:
    try:
        epochs = results.load_metrics(run).get("epochs")
    except (OSError, ValueError):
        epochs = None
    return f"a finished {epochs}-epoch run" if epochs else "a finished run"


def read_timings(run: Path, through_epoch: int) -> list[dict[str, Any]]:
    """The timings.csv rows of the epochs a resumed run already trained (1..through_epoch)."""
    path = Path(run) / "timings.csv"
    if through_epoch == 0 or not path.is_file():
        return []
    frame = pd.read_csv(path)
    return frame[frame["epoch"] <= through_epoch].to_dict(orient="records")


def clear_run(run: Path) -> None:
    """Delete what a training run wrote into ``run`` (its checkpoint and results files; benchmark.json,
    04_benchmark's measurement of the tower, stays): the start of a run from scratch."""
    for name in (CHECKPOINT, *results.RUN_FILES):
        (Path(run) / name).unlink(missing_ok=True)


def train_run(config: StudyConfig, resume: bool = True, progress: bool = True,
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
        if config.train_step == "compiled":
            experiment.compiled_visual = compile_tower(experiment.model.visual)
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
    for epoch in range(start_epoch + 1, config.epochs + 1):
        if experiment.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(experiment.device)
        started = time.perf_counter()
        train_loss = train_one_epoch(experiment, optimizer, scheduler, loss_fn, epoch, progress)
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
            save_checkpoint(experiment, optimizer, scheduler, epoch, history)
            timing = {"epoch": epoch, "train_seconds": train_seconds, "train_images": steps_per_epoch * config.batch_size,
                      "validation_seconds": validation_seconds, "val_images": evaluation["n_val"],
                      "checkpoint_seconds": time.perf_counter() - t, "epoch_seconds": time.perf_counter() - started,
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
            return pd.DataFrame(history, columns=results.HISTORY_COLUMNS)
    if main:
        if evaluation is None:  # the checkpoint holds the last epoch but the final files are missing
            evaluation = evaluate_experiment(experiment, progress)
            results.write_history(run, history)
        if not math.isfinite(evaluation["zeroshot_loss"]):
            raise NonFiniteLossError(f"non-finite zero-shot loss at the end of {run}")
        write_final_results(experiment, evaluation, len(history))
    dist_mod.barrier()
    return pd.DataFrame(history, columns=results.HISTORY_COLUMNS)


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

    parser = argparse.ArgumentParser(
        prog="python -m mvlip_utils.train",
        description="Train one run (one encoder) of the study; under torchrun on several GPUs (DDP).",
        epilog="examples:\n  python -m mvlip_utils.train --profile smoke --encoder vit --epochs 2\n"
               "  torchrun --nproc_per_node=2 -m mvlip_utils.train --profile paper --encoder mambavision "
               "--data data/imagenet-mini",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke", help="smoke or paper (the defaults every other option overrides)")
    parser.add_argument("--no-resume", action="store_true",
                        help="train from scratch: delete the run folder's checkpoint and results first (the way "
                             "on when it holds a run of other parameters, e.g. another --epochs)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    for field in dataclasses.fields(StudyConfig):
        if field.name == "profile":
            continue
        default = field.default
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, default=None, metavar="VALUE",
                            type=lambda text, d=default: _parse_value(text, d),
                            help=f"StudyConfig.{field.name} (default: the profile's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .profiles import get_config

    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("profile", "no_resume", "quiet") and v is not None}
    config = get_config(args.profile, **overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    info = dist_mod.init_from_env(config.device)
    try:
        history = train_run(config, resume=not args.no_resume, progress=not args.quiet)
        if info.is_main:
            print(history.to_string(index=False))
            print(f"run folder: {results.run_dir(config)}")
    finally:
        dist_mod.destroy()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
