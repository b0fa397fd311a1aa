"""The uint8 cache of CLIP-preprocessed images: built once per split, read back as a dataset, normalised on device."""

from __future__ import annotations

import copy
import functools
import hashlib
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from .files import atomic_path, build_lock
from .folders import ImageFolderSplit, _geometry_transform

CACHE_FORMAT = "mvlip-uint8-v1"


def _uint8(geometry, image) -> torch.Tensor:
    """An RGB image after ``geometry`` as uint8 (3, H, W)."""
    return torch.from_numpy(np.asarray(geometry(image), dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def _files_signature(paths: Sequence[str]) -> str:
    """Digest of each file's size and modification time: changes when a file is rewritten in place."""
    digest = hashlib.sha256()
    for p in paths:
        stat = os.stat(p)
        digest.update(f"{p}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _cache_is_current(path: Path, image_size: int, paths: list[str], files: str, classes: list[str]) -> bool:
    """Whether ``path`` is a readable cache of these very files, labelled by these classes, at ``image_size``."""
    try:
        old = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        return (old.get("format") == CACHE_FORMAT and old.get("image_size") == image_size
                and old.get("paths") == paths and old.get("files") == files and old.get("classes") == classes)
    except Exception:  # noqa: BLE001 - a missing or unreadable cache: build it
        return False


def cache_preprocessed(dataset: ImageFolderSplit, path, image_size: int = 224, num_workers: int = 0,
                       overwrite: bool = False, progress: bool = True) -> Path:
    """Preprocess ``dataset`` once (Resize, CenterCrop, RGB as uint8) into ``path``: ``{"images": uint8 (N,3,H,W),
    "labels": int64 (N,), "paths", "files", "classes", "image_size", "format"}``. Reused while image_size, the
    files (sizes, mtimes) and classes are unchanged, unless ``overwrite``; built under ``path``'s lock."""
    path = Path(path)
    paths = [p for p, _ in dataset.samples]
    files = _files_signature(paths)
    classes = list(dataset.classes)
    if not overwrite and _cache_is_current(path, image_size, paths, files, classes):
        return path
    with build_lock(path):
        if not overwrite and _cache_is_current(path, image_size, paths, files, classes):
            return path  # another process built it while this one waited
        images = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
        labels = torch.tensor([y for _, y in dataset.samples], dtype=torch.int64)
        view = copy.copy(dataset)  # the same files, as uint8 images before ToTensor and Normalize
        view.transform = functools.partial(_uint8, _geometry_transform(image_size))
        loader = DataLoader(view, batch_size=64, shuffle=False, num_workers=num_workers)
        i = 0
        for x, _ in tqdm(loader, desc=f"caching {path.name}", disable=not progress, leave=False):
            images[i:i + len(x)] = x
            i += len(x)
        with atomic_path(path) as tmp:
            torch.save({"format": CACHE_FORMAT, "images": images, "labels": labels, "paths": paths,
                        "files": files, "classes": classes, "image_size": image_size}, tmp)
    return path


class CachedImageDataset(Dataset):
    """Items ``(uint8 image (3,H,W), label)`` from a ``cache_preprocessed`` file (memory-mapped)."""

    def __init__(self, path):
        blob = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        self.images, self.labels = blob["images"], blob["labels"]
        self.paths, self.classes, self.image_size = blob["paths"], blob["classes"], blob["image_size"]
        self.targets = self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.images[index], int(self.labels[index])


def normalize_on_device(batch_uint8: torch.Tensor, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B,3,H,W) -> ``dtype`` on ``device``: /255 then CLIP mean/std (clip_transform's ToTensor + Normalize)."""
    x = batch_uint8.to(device=device, non_blocking=True).to(torch.float32).div_(255.0)
    mean = torch.tensor(OPENAI_DATASET_MEAN, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD, device=x.device, dtype=torch.float32).view(1, 3, 1, 1)
    return x.sub_(mean).div_(std).to(dtype)
