"""Everything a run needs, built from its configuration: the data (generated or the user's, the uint8
cache), the towers and the CLIP assembly, the prompt cache, the optimiser and schedule; and the run's
validation loaders and zero-shot evaluation.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import cache as data_cache
from ..data import folders as data_mod
from . import distributed as dist_mod
from ..data import generated
from .optim import make_adamw
from .evaluate import zero_shot_evaluate
from ..models.model import MVLIP, PromptBank, TextTower, create_text_tower
from ..settings.profiles import StudyConfig, resolve_device
from .results import run_dir
from ..models.towers import create_image_tower


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
    compiled_visual: Any = None  # torch.compile of the image tower for training (train_step compiled/graphed)

    @property
    def dist(self) -> dist_mod.DistInfo:
        return dist_mod.info()

    @property
    def run_dir(self) -> Path:
        return run_dir(self.config)


def seeded_image_tower(config: StudyConfig) -> torch.nn.Module:
    """The run's image tower, created right after ``seed_everything(config.seed)``: the towers' random
    initialisation is part of the run's definition (the text tower, when created, comes next)."""
    seed_everything(config.seed)
    return create_image_tower(config.encoder, size=config.model_size, pretrained=config.pretrained,
                              weights_path=config.image_weights, image_size=config.image_size,
                              trust_pickled_weights=config.trust_pickled_weights)


def assemble_model(config: StudyConfig, image_tower: torch.nn.Module, text_tower: TextTower, device) -> MVLIP:
    """The CLIP assembly of the two towers with the run's temperature and text-tower setting, on ``device``."""
    return MVLIP(image_tower, text_tower, temperature=config.temperature,
                 learn_temperature=config.learn_temperature, train_text=config.train_text).to(device)


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
    image_tower = seeded_image_tower(config)
    text_tower = create_text_tower(pretrained=config.pretrained, weights_path=config.text_weights,
                                   trust_pickled_weights=config.trust_pickled_weights)
    model = assemble_model(config, image_tower, text_tower, device)
    bank = PromptBank(model.text, classnames, data_mod.TEMPLATES, device=device, progress=progress)
    return Experiment(config, device, model, bank, train_set, val_set, list(classnames), Path(root), val_files)


def cache_path(config: StudyConfig, root: Path, split: str) -> Path:
    """Where the uint8 cache of ``split`` of the dataset at ``root`` lives for ``config``'s image size."""
    key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:8]
    return Path(config.data_dir) / "cache" / f"{Path(root).name}-{key}-{split}-{config.image_size}px.pt"


def cached_split(config: StudyConfig, root: Path, split: str, dataset, progress: bool = True):
    """``dataset`` served from its uint8 cache under ``data_dir/cache`` (built once, on rank 0; a process that
    finds another building the same cache waits for it and reuses it: ``data.cache_preprocessed``)."""
    path = cache_path(config, root, split)
    with dist_mod.main_first():
        if dist_mod.is_main():
            data_cache.cache_preprocessed(dataset, path, config.image_size, num_workers=config.num_workers,
                                        progress=progress)
    return data_cache.CachedImageDataset(path)


def prepare_shared_inputs(configs, progress: bool = True) -> list[Path]:
    """Build what the runs of ``configs`` (one per encoder of an edition) share, once, before they start: the
    generated dataset and, for the runs with ``data_cache``, the uint8 caches of both splits at each image size
    asked for. Returns the dataset folders and cache files, in that order, each once. (Each run would find or
    build them itself, safely; done first, the chains that run at once do not wait for each other's build.)"""
    prepared: list[Path] = []
    for config in configs:
        root = dataset_root(config, progress)
        if root not in prepared:
            prepared.append(root)
        if not config.data_cache:
            continue
        splits = None
        for split in ("train", "val"):
            path = cache_path(config, root, split)
            if path in prepared:
                continue
            if splits is None:
                train_set, val_set, _ = data_mod.load_splits(root, image_size=config.image_size, progress=progress)
                splits = {"train": train_set, "val": val_set}
            data_cache.cache_preprocessed(splits[split], path, config.image_size, num_workers=config.num_workers,
                                        progress=progress)
            prepared.append(path)
    return prepared


def sample_paths(dataset) -> list[str]:
    return [path for path, _ in dataset.samples] if hasattr(dataset, "samples") else list(dataset.paths)


def caption_features(experiment: Experiment, labels: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """Normalised text features of the captions (labels, template indices): cached, or computed when the
    text tower is trained."""
    if experiment.config.train_text:
        tokens = experiment.model.text.tokenizer(experiment.bank.captions(labels, templates)).to(experiment.device)
        return experiment.model.encode_text(tokens, normalize=True)
    return experiment.bank.caption_features(labels, templates)


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
        dataset = (experiment.val_set if isinstance(experiment.val_set, data_cache.CachedImageDataset) else
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


def compile_tower(tower: torch.nn.Module, mode: str | None = None):
    """``torch.compile`` of the image tower for training (``mode="reduce-overhead"``: inductor's kernels
    replayed as CUDA graphs on a GPU). MambaVision's blocks break the graph at the selective scan and
    differ in their drop-path rate, which dynamo guards on: one recompile per block, so its recompile
    limit is raised to the tower's number of modules (the default of 8 would leave most blocks eager)."""
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
    return torch.compile(tower, mode=mode)


COMPILE_MODES = {"compiled": None, "graphed": "reduce-overhead"}  # train_step -> torch.compile mode


def training_tower(config: StudyConfig, tower: torch.nn.Module):
    """The compiled image tower that ``config.train_step`` trains through (compiled, graphed), or None
    (eager, fused: the model's own tower)."""
    return compile_tower(tower, COMPILE_MODES[config.train_step]) if config.train_step in COMPILE_MODES else None


def make_optimizer(experiment: Experiment):
    """AdamW over the trainable parameters (``train_step`` eager: PyTorch's default implementation; the
    others fused) and the cosine schedule over every step of the run."""
    config = experiment.config
    optimizer = make_adamw(experiment.model.trainable_parameters(), config.lr, config.weight_decay,
                           "foreach" if config.train_step == "eager" else "fused")
    steps_per_epoch = len(experiment.train_set) // config.batch_size
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs * steps_per_epoch))
    return optimizer, scheduler
