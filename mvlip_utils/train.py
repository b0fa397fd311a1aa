"""The training loop: one epoch at a time, a checkpoint after each, exact resume.

Protocol (the paper's, FACTS.md): AdamW(lr, weight_decay) over the image tower and its projection
(the text tower is frozen unless ``train_text``; the temperature is fixed at 0.07 unless
``learn_temperature``), cosine annealing stepped every batch over all steps, grad-norm clip, batch 32 with
drop_last, symmetric contrastive loss (open_clip's ``ClipLoss``). Each training sample gets one of the 10
templates at random; captions' text features come from the ``PromptBank``.

Per epoch the run folder gets a row in ``history.csv`` and an atomically written ``checkpoint.pt``
(model, optimiser, scheduler, RNG states, epoch, configuration, history). Shuffling and caption draws are
seeded per epoch, so a resumed run ends with the same metrics as an uninterrupted one.
"""

from __future__ import annotations

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
from open_clip import ClipLoss
from tqdm.auto import tqdm

from . import data as data_mod
from . import results
from .evaluate import autocast_context, zero_shot_evaluate
from .model import MVLIP, PromptBank, create_text_tower
from .profiles import StudyConfig, resolve_device
from .towers import SSM_BACKEND, count_parameters, create_image_tower

logger = logging.getLogger("mvlip_utils.train")

CHECKPOINT = "checkpoint.pt"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def dataset_root(config: StudyConfig, progress: bool = True) -> Path:
    """The folder with train/ and val/: the generated offline dataset, or the user's data."""
    if config.data == "generated":
        name = (f"generated-c{config.generated_classes}-n{config.generated_train_per_class}"
                f"-v{config.generated_val_per_class}-s{config.image_size}-seed{config.seed}")
        return data_mod.make_generated_dataset(
            Path(config.data_dir) / name, n_classes=config.generated_classes,
            train_per_class=config.generated_train_per_class, val_per_class=config.generated_val_per_class,
            image_size=config.image_size, seed=config.seed, progress=progress)
    root = Path(config.data)
    if not root.is_dir():
        raise FileNotFoundError(f"parameter data={config.data!r}: no such folder (expected a folder with "
                                f"train/<class>/ and val/<class>/, or data='generated' for the offline dataset)")
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

    @property
    def run_dir(self) -> Path:
        return results.run_dir(self.config)


def build_experiment(config: StudyConfig, progress: bool = True) -> Experiment:
    device = resolve_device(config.device)
    seed_everything(config.seed)  # the towers' random initialisation is part of the run's definition
    root = dataset_root(config, progress)
    transform = data_mod.clip_transform(config.image_size)
    train_set, val_set, classnames = data_mod.load_splits(root, transform=transform, image_size=config.image_size,
                                                          progress=progress)
    image_tower = create_image_tower(config.encoder, size=config.model_size, pretrained=config.pretrained,
                                     weights_path=config.image_weights, image_size=config.image_size)
    text_tower = create_text_tower(pretrained=config.pretrained, weights_path=config.text_weights)
    model = MVLIP(image_tower, text_tower, temperature=config.temperature,
                  learn_temperature=config.learn_temperature, train_text=config.train_text).to(device)
    bank = PromptBank(model.text, classnames, data_mod.TEMPLATES, device=device, progress=progress)
    return Experiment(config, device, model, bank, train_set, val_set, list(classnames), Path(root))


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
    with autocast_context(experiment.device, experiment.config.precision):
        image_features = model.encode_image(images.to(experiment.device, non_blocking=True), normalize=True)
    text_features = caption_features(experiment, labels, templates)
    return loss_fn(image_features.float(), text_features.float(), model.logit_scale.exp())


def train_one_epoch(experiment: Experiment, optimizer, scheduler, loss_fn: ClipLoss, epoch: int,
                    progress: bool = True) -> float:
    config = experiment.config
    model = experiment.model
    model.train()
    loader = data_mod.make_loader(experiment.train_set, config.batch_size, shuffle=True, drop_last=True,
                                  num_workers=config.num_workers, seed=config.seed * 1000 + epoch,
                                  pin_memory=experiment.device.startswith("cuda"))
    draws = _epoch_generator(config.seed, epoch, stream=1)
    total, steps = 0.0, 0
    bar = tqdm(loader, desc=f"{config.encoder} epoch {epoch}/{config.epochs}", disable=not progress, leave=False)
    for step, (images, labels) in enumerate(bar):
        templates = torch.randint(len(experiment.bank.templates), (len(labels),), generator=draws)
        loss = contrastive_loss(experiment, loss_fn, images, labels, templates)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at epoch {epoch}, step {step}; stopped. "
                f"The last good checkpoint is kept at {experiment.run_dir / CHECKPOINT} "
                f"(try a lower lr, precision='fp32' or grad_clip > 0)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        total += loss.item()
        steps += 1
        bar.set_postfix(loss=f"{total / steps:.4f}")
    if steps == 0:
        raise ValueError(f"parameter batch_size={config.batch_size} is larger than the training set "
                         f"({len(experiment.train_set)} images) and drop_last leaves no batch")
    return total / steps


@torch.no_grad()
def validation_loss(experiment: Experiment, loss_fn: ClipLoss, progress: bool = True) -> float:
    """Mean contrastive loss over val batches, captions drawn with a fixed seed (the same every epoch)."""
    config = experiment.config
    experiment.model.eval()
    loader = data_mod.make_loader(experiment.val_set, config.eval_batch_size, shuffle=False, drop_last=False,
                                  num_workers=config.num_workers, seed=config.seed)
    draws = _epoch_generator(config.seed, 0, stream=2)
    losses, sizes = [], []
    for images, labels in tqdm(loader, desc="val loss", disable=not progress, leave=False):
        templates = torch.randint(len(experiment.bank.templates), (len(labels),), generator=draws)
        losses.append(contrastive_loss(experiment, loss_fn, images, labels, templates).item())
        sizes.append(len(labels))
    return float(np.average(losses, weights=sizes))


def evaluate_experiment(experiment: Experiment, progress: bool = True) -> dict[str, Any]:
    config = experiment.config
    loader = data_mod.make_loader(experiment.val_set, config.eval_batch_size, shuffle=False, drop_last=False,
                                  num_workers=config.num_workers, seed=config.seed,
                                  pin_memory=experiment.device.startswith("cuda"))
    return zero_shot_evaluate(experiment.model, loader, experiment.bank.classifier, experiment.classnames,
                              experiment.device, config.precision, progress)


def make_optimizer(experiment: Experiment):
    config = experiment.config
    optimizer = torch.optim.AdamW(experiment.model.trainable_parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    steps_per_epoch = len(experiment.train_set) // config.batch_size
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs * steps_per_epoch))
    return optimizer, scheduler


def _model_state(model: MVLIP, train_text: bool) -> dict[str, torch.Tensor]:
    # the frozen text tower is rebuilt from its weights (or the seed), so it stays out of the checkpoint
    return {k: v for k, v in model.state_dict().items() if train_text or not k.startswith("text.")}


def save_checkpoint(experiment: Experiment, optimizer, scheduler, epoch: int, history: list[dict]) -> Path:
    state = {
        "epoch": epoch,
        "model": _model_state(experiment.model, experiment.config.train_text),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "config": experiment.config.to_dict(),
        "history": history,
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = experiment.run_dir / CHECKPOINT
    results.atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(experiment: Experiment, optimizer, scheduler) -> tuple[int, list[dict]]:
    """Restore a run from its checkpoint; returns (last complete epoch, history). (0, []) when none."""
    path = experiment.run_dir / CHECKPOINT
    if not path.is_file():
        return 0, []
    state = torch.load(path, map_location="cpu", weights_only=False)
    saved, current = state["config"], experiment.config.to_dict()
    changed = {k: (saved.get(k), v) for k, v in current.items()
               if k not in ("epochs", "device", "num_workers", "note") and saved.get(k) != v}
    if changed:
        raise ValueError(f"checkpoint {path} was written with other parameters {changed} (saved, now); "
                         f"use another results_dir or force=True to start again")
    missing, unexpected = experiment.model.load_state_dict(state["model"], strict=False)
    if unexpected or any(not k.startswith("text.") for k in missing):
        raise ValueError(f"checkpoint {path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["epoch"]), list(state["history"])


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
                  "path": [path for path, _ in experiment.val_set.samples]}
                 ).to_csv(run / "predictions.csv", index=False)
    results.write_json(run / "metrics.json", metrics)
    return metrics


def train_run(config: StudyConfig, resume: bool = True, progress: bool = True,
              stop_after_epoch: int | None = None,
              on_epoch_end: Callable[[dict[str, Any]], None] | None = None) -> pd.DataFrame:
    """Train (or resume) the run of ``config``; returns its history. ``stop_after_epoch`` ends early
    (as an interruption would) after that epoch's checkpoint, without writing metrics.json."""
    experiment = build_experiment(config, progress)
    run = experiment.run_dir
    run.mkdir(parents=True, exist_ok=True)
    optimizer, scheduler = make_optimizer(experiment)
    loss_fn = ClipLoss()
    if not resume:
        for name in (CHECKPOINT, "metrics.json"):
            (run / name).unlink(missing_ok=True)
    start_epoch, history = load_checkpoint(experiment, optimizer, scheduler)
    if start_epoch:
        logger.info("resuming %s from epoch %d", run, start_epoch)
    write_run_config(experiment)
    evaluation = None
    for epoch in range(start_epoch + 1, config.epochs + 1):
        started = time.perf_counter()
        train_loss = train_one_epoch(experiment, optimizer, scheduler, loss_fn, epoch, progress)
        val_loss = validation_loss(experiment, loss_fn, progress)
        evaluation = evaluate_experiment(experiment, progress)
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
               "val_zeroshot_loss": evaluation["zeroshot_loss"],
               **{k: evaluation[k] for k in results.HISTORY_COLUMNS[4:]}}
        history.append(row)
        results.write_history(run, history)
        save_checkpoint(experiment, optimizer, scheduler, epoch, history)
        logger.info("epoch %d: %s (%.1fs)", epoch, {k: round(v, 4) for k, v in row.items()},
                    time.perf_counter() - started)
        if on_epoch_end:
            on_epoch_end(row)
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < config.epochs:
            return pd.DataFrame(history, columns=results.HISTORY_COLUMNS)
    if evaluation is None:  # everything was already trained: evaluate the restored model
        evaluation = evaluate_experiment(experiment, progress)
    if not math.isfinite(evaluation["zeroshot_loss"]):
        raise NonFiniteLossError(f"non-finite zero-shot loss at the end of {run}")
    write_final_results(experiment, evaluation, len(history))
    return pd.DataFrame(history, columns=results.HISTORY_COLUMNS)
