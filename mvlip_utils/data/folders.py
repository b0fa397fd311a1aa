"""Reading image folders: caption templates, class names, CLIP preprocessing, ImageFolder splits and seeded loaders.

Classes are the train split's class folders, sorted (wnid folders follow open_clip's sorted-wnid order). Image
files are recognised by extension, case-insensitively; hidden files are ignored; folders are walked recursively,
like torchvision's ImageFolder; images are converted to RGB without EXIF rotation.
"""

from __future__ import annotations

import logging
import os
import random
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import Compose
from tqdm.auto import tqdm

import open_clip
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from .generated import imagenet_wnids

logger = logging.getLogger("mvlip_utils.data")

TEMPLATES: tuple[str, ...] = (  # the paper's 10 caption templates (the authors' code)
    "a photo of a {}", "a picture of a {}", "an image of a {}", "a {} in the photo", "this is a {}",
    "this is a photo of a {}", "a cropped photo of a {}", "a good photo of a {}", "a close-up photo of a {}",
    "a bright photo of a {}",
)


def sample_captions(labels, classnames: Sequence[str], generator: torch.Generator | None = None) -> list[str]:
    """One caption per label: a template drawn uniformly at random, filled with that label's class name.
    Pass a seeded ``torch.Generator`` for a reproducible draw."""
    labels = torch.as_tensor(labels).reshape(-1)
    picks = torch.randint(len(TEMPLATES), (len(labels),), generator=generator)
    return [TEMPLATES[int(t)].format(classnames[int(y)]) for t, y in zip(picks, labels)]


WNID_RE = re.compile(r"^n\d{8}$")


def class_names_for_folders(folder_names: Sequence[str]) -> list[str]:
    """Folder names -> caption class names: ImageNet wnid folders -> open_clip's CLIP ImageNet names, any other
    folder -> its name with "_" replaced by " ". ValueError for unknown wnids or a mix of both kinds."""
    names = [str(f) for f in folder_names]
    wnids, other = [n for n in names if WNID_RE.match(n)], [n for n in names if not WNID_RE.match(n)]
    if wnids and other:
        raise ValueError(f"folder_names mixes ImageNet wnid folders (e.g. {wnids[:5]}) with other folders "
                         f"(e.g. {other[:5]}); use one kind")
    if wnids:
        table = {w: i for i, w in enumerate(imagenet_wnids(len(open_clip.IMAGENET_CLASSNAMES)))}
        unknown = [n for n in names if n not in table]
        if unknown:
            raise ValueError(f"folder_names: unknown ImageNet wnid(s) {unknown[:10]}"
                             f"{' ...' if len(unknown) > 10 else ''} (not among ImageNet-1k's 1000 classes)")
        return [open_clip.IMAGENET_CLASSNAMES[table[n]] for n in names]
    return [n.replace("_", " ") for n in names]


def clip_transform(image_size: int = 224):
    """open_clip's CLIP eval preprocessing: Resize(image_size, bicubic), CenterCrop, RGB, ToTensor,
    Normalize(OpenAI CLIP mean/std); no augmentation."""
    return open_clip.image_transform(image_size, is_train=False, mean=OPENAI_DATASET_MEAN, std=OPENAI_DATASET_STD)


def _geometry_transform(image_size: int):
    """The part of clip_transform before ToTensor/Normalize (Resize, CenterCrop, RGB): PIL -> PIL."""
    return Compose(clip_transform(image_size).transforms[:-2])


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: 16/32-bit greyscale rescaled to 8 bits (not clipped), alpha dropped."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16"):
            arr = arr / 257.0
        elif arr.size and arr.max() > 255:
            arr = arr * (255.0 / (65535.0 if arr.max() <= 65535 else arr.max()))
        elif mode == "F" and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img.convert("RGB")


def load_image(path) -> Image.Image:
    """Open, decode and convert to RGB (raises PIL/OS errors for bad files)."""
    with Image.open(path) as im:
        im.load()
        return to_rgb(im)


IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _list_images(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames)
                   if not f.startswith(".") and f.lower().endswith(IMG_EXTENSIONS))
    return out


def _check_file(path: Path) -> str | None:
    """None if the file looks like a readable image, else the reason: PIL's verify, plus a full decode of truncated
    JPEGs and of formats verify checks little."""
    try:
        with Image.open(path) as im:
            fmt = im.format
            w, h = im.size
            if w < 1 or h < 1:
                return f"empty image size {im.size}"
            im.verify()
        full = fmt not in ("JPEG", "PNG", "MPO")
        if fmt in ("JPEG", "MPO"):
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 4096))
                full = b"\xff\xd9" not in f.read()
        if full:
            with Image.open(path) as im:
                im.load()
                to_rgb(im)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means the file is unusable
        return f"{type(exc).__name__}: {exc}"


class ImageFolderSplit(Dataset):
    """One split of an ImageFolder (``split_dir/<class folder>/**/<image>``) with a fixed class list.

    Label = index in ``classes`` (``load_splits`` checks that every class folder is one). Files are scanned on
    construction (``_check_file``); unreadable ones are left out and listed in ``.skipped`` as (path, reason).
    Items are ``(transform(rgb_image), label)``, by default ``clip_transform(image_size)``."""

    def __init__(self, split_dir, classes: Sequence[str], transform: Callable | None = None,
                 image_size: int = 224, progress: bool = True, workers: int = 8):
        self.root = Path(split_dir)
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        present = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.transform = transform if transform is not None else clip_transform(image_size)
        candidates: list[tuple[Path, int]] = []
        for c in present:
            candidates.extend((p, self.class_to_idx[c]) for p in _list_images(self.root / c))
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            reasons = list(tqdm(pool.map(_check_file, [p for p, _ in candidates]), total=len(candidates),
                                desc=f"scanning {self.root}", disable=not progress or len(candidates) < 2000,
                                leave=False))
        self.samples = [(str(p), y) for (p, y), r in zip(candidates, reasons) if r is None]
        self.skipped = [(str(p), r) for (p, _), r in zip(candidates, reasons) if r is not None]
        self.targets = [y for _, y in self.samples]
        if self.skipped:
            logger.warning("%s: skipped %d unreadable image file(s): %s", self.root, len(self.skipped),
                           [p for p, _ in self.skipped][:20] + (["..."] if len(self.skipped) > 20 else []))
        counts = np.bincount(np.asarray(self.targets, dtype=np.int64), minlength=len(self.classes))
        self.empty_classes = [c for c in present if counts[self.class_to_idx[c]] == 0]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            img = load_image(path)
        except Exception as exc:  # passed the scan but fails now: name the file
            raise OSError(f"cannot decode image {path} ({type(exc).__name__}: {exc})") from exc
        return self.transform(img), label


def load_splits(root, transform: Callable | None = None, image_size: int = 224, *, progress: bool = True):
    """``root/train`` and ``root/val`` -> (train_ds, val_ds, classnames). FileNotFoundError for a missing folder,
    ValueError for no class folders, an empty train class or val classes absent from train."""
    root = Path(root)
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise FileNotFoundError(f"{root}: missing the '{split}' folder ({root / split}); "
                                    "expected root/train/<class>/... and root/val/<class>/...")
    classes = sorted(d.name for d in (root / "train").iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{root / 'train'}: no class folders (expected train/<class>/<images>)")
    val_folders = sorted(d.name for d in (root / "val").iterdir() if d.is_dir() and not d.name.startswith("."))
    missing = [c for c in val_folders if c not in set(classes)]
    if missing:
        raise ValueError(f"{root / 'val'}: class folder(s) absent from train/: {missing[:10]}"
                         f"{' ...' if len(missing) > 10 else ''}")
    classnames = class_names_for_folders(classes)  # raises for unknown / mixed wnids
    train = ImageFolderSplit(root / "train", classes, transform, image_size, progress=progress)
    if train.empty_classes:
        raise ValueError(f"{root / 'train'}: class folder(s) with no readable image: "
                         f"{[str(root / 'train' / c) for c in train.empty_classes[:10]]}")
    val = ImageFolderSplit(root / "val", classes, transform, image_size, progress=progress)
    if val.empty_classes:
        logger.warning("%s: %d val class folder(s) without a readable image: %s", root / "val",
                       len(val.empty_classes), val.empty_classes[:20])
    no_val = [c for c in classes if c not in set(val_folders)]
    if no_val:
        logger.info("%s: %d class(es) have no val folder: %s", root / "val", len(no_val), no_val[:20])
    if len(val) == 0:
        raise ValueError(f"{root / 'val'}: no readable images")
    return train, val, classnames


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32  # set per worker by the DataLoader from its generator
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset, batch_size: int, shuffle: bool, drop_last: bool, num_workers: int = 0, seed: int = 0,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader whose shuffle order and worker seeds are fixed by ``seed`` (a seeded torch.Generator)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      num_workers=num_workers, generator=torch.Generator().manual_seed(int(seed)),
                      worker_init_fn=_seed_worker, pin_memory=pin_memory, persistent_workers=False)
