"""What a run is built from (data and cache, towers, prompt bank, optimiser) and its zero-shot evaluation."""

from __future__ import annotations

import hashlib
import os
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
from ..data.files import atomic_path, build_lock
from .evaluate import zero_shot_evaluate
from ..models.model import MVLIP, PromptBank, TextTower, create_text_tower
from ..settings.profiles import StudyConfig, resolve_device
from .run_folder import run_dir
from ..models.towers import create_image_tower

DATA_SEED = 0  # the generated datasets' seed: the same for every seed of every encoder


def dataset_root(config: StudyConfig, progress: bool = True) -> Path:
    """The folder with train/ and val/: the user's, or a generated dataset written once under ``data_dir`` in a
    folder named by all that decides its images (the generator's version too). FileNotFoundError if missing."""
    counts = f"c{config.generated_classes}-n{config.generated_train_per_class}-v{config.generated_val_per_class}"
    if config.data == "generated":
        return generated.make_generated_dataset(
            Path(config.data_dir) / f"generated-{counts}-s{config.image_size}-gen{generated.GENERATOR_VERSION}",
            n_classes=config.generated_classes, train_per_class=config.generated_train_per_class,
            val_per_class=config.generated_val_per_class, image_size=config.image_size, seed=DATA_SEED,
            progress=progress)
    if config.data == "generated-imagenet":
        return generated.make_imagenet_like_dataset(
            Path(config.data_dir) / f"generated-imagenet-{counts}-gen{generated.IMAGENET_LIKE_VERSION}",
            n_classes=config.generated_classes, train_per_class=config.generated_train_per_class,
            val_per_class=config.generated_val_per_class, seed=DATA_SEED, progress=progress)
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
    def run_dir(self) -> Path:
        return run_dir(self.config)


TEXT_SEED = 0  # a random text tower's initialisation: the same for every seed


def seeded_image_tower(config: StudyConfig) -> torch.nn.Module:
    """The run's image tower, created right after seeding Python, numpy and torch with ``config.seed``."""
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    torch.manual_seed(config.seed)
    return create_image_tower(config.encoder, size=config.model_size, pretrained=config.pretrained,
                              weights_path=config.image_weights, image_size=config.image_size,
                              trust_pickled_weights=config.trust_pickled_weights)


def assemble_model(config: StudyConfig, image_tower: torch.nn.Module, text_tower: TextTower, device) -> MVLIP:
    """The CLIP model of the two towers with the run's temperature and text-tower settings, on ``device``."""
    return MVLIP(image_tower, text_tower, temperature=config.temperature,
                 learn_temperature=config.learn_temperature, train_text=config.train_text).to(device)


def build_experiment(config: StudyConfig, progress: bool = True, shared: dict | None = None) -> Experiment:
    """The run of ``config``, built; ``shared``: a dict carrying data and frozen text tower from seed to seed."""
    shared = {} if shared is None else shared
    device = resolve_device(config.device)
    if device == "cuda" and dist_mod.info().enabled:  # under a process group: this rank's GPU
        device = f"cuda:{dist_mod.info().local_rank}"
    if "data" not in shared:
        with dist_mod.main_first():  # rank 0 writes the generated dataset, the others then find it there
            root = dataset_root(config, progress)
        train_set, val_set, classnames = data_mod.load_splits(
            root, transform=data_mod.clip_transform(config.image_size), image_size=config.image_size, progress=progress)
        val_files = val_set
        if config.data_cache:
            train_set, val_set = (cached_split(config, root, split, dataset, progress)
                                  for split, dataset in (("train", train_set), ("val", val_set)))
        shared["data"] = (Path(root), train_set, val_set, list(classnames), val_files)
    root, train_set, val_set, classnames, val_files = shared["data"]
    text_tower, bank = (None, None) if config.train_text else shared.get("text", (None, None))
    if text_tower is None:
        torch.manual_seed(TEXT_SEED)
        text_tower = create_text_tower(pretrained=config.pretrained, weights_path=config.text_weights,
                                       trust_pickled_weights=config.trust_pickled_weights)
    model = assemble_model(config, seeded_image_tower(config), text_tower, device)
    if bank is None:
        bank = prompt_bank(config, model, classnames, device, progress)
        if not config.train_text:
            shared["text"] = (text_tower, bank)
    return Experiment(config, device, model, bank, train_set, val_set, classnames, root, val_files)


def prompt_bank(config: StudyConfig, model: MVLIP, classnames: list[str], device, progress: bool) -> PromptBank:
    """The text features of every (class, template) prompt, cached under ``data_dir/cache`` for a frozen text
    tower (per weights, prompts, device kind and library versions)."""
    import open_clip

    if config.train_text:
        return PromptBank(model.text, classnames, data_mod.TEMPLATES, device=device, progress=progress)
    weights = Path(config.text_weights or os.environ.get("MVLIP_TEXT_WEIGHTS") or "") if config.pretrained else None
    source = (f"{weights}:{weights.stat().st_size}:{weights.stat().st_mtime_ns}" if weights and weights.is_file()
              else f"pretrained={config.pretrained}, seed={TEXT_SEED}")
    key = hashlib.sha1(repr((source, classnames, data_mod.TEMPLATES, torch.device(device).type, torch.__version__,
                             open_clip.__version__)).encode()).hexdigest()[:16]
    path = Path(config.data_dir) / "cache" / f"text-features-{key}.pt"
    if path.is_file():
        return PromptBank(model.text, classnames, data_mod.TEMPLATES, device=device,
                          features=torch.load(path, map_location="cpu", weights_only=True))
    bank = PromptBank(model.text, classnames, data_mod.TEMPLATES, device=device, progress=progress)
    with build_lock(path), atomic_path(path) as tmp:
        torch.save(bank.features.reshape(len(bank.prompts), -1).cpu(), tmp)
    return bank


def cache_path(config: StudyConfig, root: Path, split: str) -> Path:
    """The uint8 cache file of ``split`` of the dataset at ``root`` at ``config``'s image size."""
    key = hashlib.sha1(str(Path(root).resolve()).encode()).hexdigest()[:8]
    return Path(config.data_dir) / "cache" / f"{Path(root).name}-{key}-{split}-{config.image_size}px.pt"


def cached_split(config: StudyConfig, root: Path, split: str, dataset, progress: bool = True):
    """``dataset`` served from its uint8 cache under ``data_dir/cache`` (built once, on rank 0)."""
    path = cache_path(config, root, split)
    with dist_mod.main_first():
        if dist_mod.info().is_main:
            data_cache.cache_preprocessed(dataset, path, config.image_size, num_workers=config.num_workers,
                                        progress=progress)
    return data_cache.CachedImageDataset(path)


def prepare_shared_inputs(configs, progress: bool = True) -> list[Path]:
    """Build once, before the runs of ``configs`` start, what they share: the datasets and (``data_cache``) the
    uint8 caches of both splits. Returns the dataset folders and cache files, each once."""
    prepared: list[Path] = []
    for config in configs:
        root = dataset_root(config, progress)
        paths = [cache_path(config, root, split) for split in ("train", "val")] if config.data_cache else []
        if root not in prepared:
            prepared.append(root)
        if paths and paths[0] not in prepared:  # both splits' caches, built from the same scan of the folder
            splits = data_mod.load_splits(root, image_size=config.image_size, progress=progress)[:2]
            for dataset, path in zip(splits, paths):
                data_cache.cache_preprocessed(dataset, path, config.image_size, num_workers=config.num_workers,
                                              progress=progress)
            prepared += paths
    return prepared


def caption_features(experiment: Experiment, labels: torch.Tensor, templates: torch.Tensor) -> torch.Tensor:
    """Normalised text features of the captions (labels, template indices)."""
    if experiment.config.train_text:
        tokens = experiment.model.text.tokenizer(experiment.bank.captions(labels, templates)).to(experiment.device)
        return experiment.model.encode_text(tokens, normalize=True)
    return experiment.bank.caption_features(labels, templates)


def eval_loader(experiment: Experiment, source: str = "run", num_workers: int | None = None):
    """The validation loader of ``source``: "run" (the run's val_set), "files" (decoding image files) or "cache"
    (the uint8 cache, built if needed); ``num_workers`` defaults to the run's."""
    config = experiment.config
    if source == "run":
        dataset = experiment.val_set
    elif source == "files":
        dataset = experiment.val_files
    else:
        dataset = (experiment.val_set if isinstance(experiment.val_set, data_cache.CachedImageDataset) else
                   cached_split(config, experiment.data_root, "val", experiment.val_files, progress=False))
    return data_mod.make_loader(dataset, config.eval_batch_size, shuffle=False, drop_last=False,
                                num_workers=config.num_workers if num_workers is None else num_workers,
                                seed=config.seed, pin_memory=experiment.device.startswith("cuda"))


def evaluate_experiment(experiment: Experiment, progress: bool = True, loader=None,
                        on_features=None, precision: str | None = None) -> dict[str, Any]:
    """Zero-shot evaluation of the run's model (``loader``: ``eval_loader()``; ``precision``: the run's)."""
    loader = loader if loader is not None else eval_loader(experiment)
    return zero_shot_evaluate(experiment.model, loader, experiment.bank.classifier, experiment.classnames,
                              experiment.device, precision or experiment.config.precision, progress,
                              on_features=on_features)


COMPILE_MODES = {"compiled": None, "graphed": "reduce-overhead"}  # train_step -> torch.compile mode


def training_tower(config: StudyConfig, tower: torch.nn.Module):
    """The compiled image tower ``config.train_step`` trains through, or None (eager, fused): ``torch.compile``
    with dynamo's recompile limit raised to the tower's number of modules (MambaVision recompiles once per
    block: their drop-path rates differ)."""
    if config.train_step not in COMPILE_MODES:
        return None
    import torch._dynamo
    import torch._inductor.config

    blocks = sum(1 for _ in tower.modules())
    dynamo = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo, name):
            setattr(dynamo, name, max(getattr(dynamo, name), blocks))
    # drop path draws from PyTorch's generator, as in eager mode: the same stochastic-depth masks
    torch._inductor.config.fallback_random = True
    return torch.compile(tower, mode=COMPILE_MODES[config.train_step])


def make_adamw(parameters, lr: float = 1e-4, weight_decay: float = 0.01, fused: bool = False):
    """AdamW over the trainable ``parameters``: PyTorch's default implementation or its fused one."""
    params = [p for p in parameters if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True if fused else None)


def make_optimizer(experiment: Experiment):
    """(AdamW, fused unless ``train_step`` is eager; the cosine schedule over every step of the run)."""
    config = experiment.config
    optimizer = make_adamw(experiment.model.trainable_parameters(), config.lr, config.weight_decay,
                           fused=config.train_step != "eager")
    steps_per_epoch = len(experiment.train_set) // config.batch_size
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.epochs * steps_per_epoch))
    return optimizer, scheduler
