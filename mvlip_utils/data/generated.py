"""The generated datasets of the offline profiles: coloured shapes (smoke) and ImageNet-mini-shaped JPEGs (speed).

Each is written once and reused while its ``manifest.json`` matches; one of ours with other parameters (or
unfinished) is rewritten in place; a non-empty folder without our manifest is refused (ValueError). Writing
holds the dataset's lock (``<root>.lock``) and every file is written atomically.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing as mp
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from .files import atomic_path, build_lock

logger = logging.getLogger("mvlip_utils.generated")

GENERATOR_NAME = "mvlip_utils.data.make_generated_dataset"  # as in existing manifests: do not rename
GENERATOR_VERSION = 1

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 40, 40), "blue": (40, 80, 225), "green": (35, 165, 60), "yellow": (235, 215, 40),
    "purple": (135, 55, 190), "orange": (245, 135, 25), "pink": (245, 125, 185), "cyan": (40, 205, 215),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "diamond", "hexagon", "ring")


def generated_class_combos(n_classes: int) -> list[tuple[str, str]]:
    """The first ``n_classes`` (colour, shape) pairs, neighbours differing in both (red circle, blue square,
    ...); at most len(COLOURS) * len(SHAPES) classes."""
    colours, n_s = list(COLOURS), len(SHAPES)
    limit = len(colours) * n_s
    if not isinstance(n_classes, int) or not 1 <= n_classes <= limit:
        raise ValueError(f"n_classes must be an int in [1, {limit}] (colours x shapes), got {n_classes!r}")
    pairs = [(colours[c], SHAPES[(c + d) % n_s]) for d in range(n_s) for c in range(len(colours))]
    return pairs[:n_classes]


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    def rot(points):
        ca, sa = math.cos(angle), math.sin(angle)
        return [(cx + x * ca - y * sa, cy + x * sa + y * ca) for x, y in points]

    if shape == "square":
        s = r / math.sqrt(2) * 1.15
        return rot([(-s, -s), (s, -s), (s, s), (-s, s)])
    if shape == "triangle":
        return rot([(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2 + k * 2 * math.pi / 3 for k in range(3))])
    if shape == "diamond":
        return rot([(0, -r), (0.62 * r, 0), (0, r), (-0.62 * r, 0)])
    if shape == "hexagon":
        return rot([(r * math.cos(k * math.pi / 3), r * math.sin(k * math.pi / 3)) for k in range(6)])
    if shape == "star":
        polar = [(r if k % 2 == 0 else 0.42 * r, -math.pi / 2 + k * math.pi / 5) for k in range(10)]
        return rot([(rr * math.cos(a), rr * math.sin(a)) for rr, a in polar])
    if shape == "cross":
        w = 0.33 * r
        return rot([(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w),
                    (-r, w), (-r, -w), (-w, -w)])


def _draw_sample(colour: str, shape: str, image_size: int, rng: np.random.Generator) -> Image.Image:
    """One image: a jittered coloured shape on a shaded, tinted background plus noise, drawn at 4x and downsampled."""
    big = image_size * 4
    shade = rng.uniform(70, 190)
    tint = rng.uniform(-12, 12, size=3)
    bg = tuple(int(np.clip(shade + t, 0, 255)) for t in tint)
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(COLOURS[colour], rng.uniform(-25, 25, size=3)))
    r = rng.uniform(0.16, 0.32) * big
    cx, cy = rng.uniform(r, big - r), rng.uniform(r, big - r)
    angle = rng.uniform(0, 2 * math.pi)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=fill, width=max(1, int(0.3 * r)))
    else:
        draw.polygon(_shape_polygon(shape, cx, cy, r, angle), fill=fill)
    img = img.resize((image_size, image_size), Image.Resampling.BOX)
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0.0, 8.0, size=(image_size, image_size, 3))
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8))


def _manifest(generator: str, version: int, params: dict, classes: list[str]) -> dict:
    """A dataset's manifest.json (``params`` holds at least n_classes, train_per_class and val_per_class)."""
    train, val, n_classes = params["train_per_class"], params["val_per_class"], params["n_classes"]
    return {"generator": generator, "version": version, "params": params, "classes": classes,
            "counts": {"train": {c: train for c in classes}, "val": {c: val for c in classes},
                       "train_total": train * n_classes, "val_total": val * n_classes},
            "complete": True}


def make_generated_dataset(root, n_classes: int = 10, train_per_class: int = 40, val_per_class: int = 10,
                           image_size: int = 64, seed: int = 0, progress: bool = True) -> Path:
    """Write (or reuse) the coloured-shapes dataset at ``root`` (``root/{train,val}/<colour> <shape>/NNNN.png``);
    each image has its own RNG stream (seed, split, class, index), so equal parameters give identical files."""
    if image_size < 16:
        raise ValueError(f"image_size={image_size}: the generated dataset draws at least 16 px")
    root = Path(root)
    combos = generated_class_combos(n_classes)
    manifest = _manifest(GENERATOR_NAME, GENERATOR_VERSION,
                         {"n_classes": n_classes, "train_per_class": int(train_per_class),
                          "val_per_class": int(val_per_class), "image_size": int(image_size), "seed": int(seed)},
                         [f"{c} {s}" for c, s in combos])

    def write() -> None:
        jobs = [(split, si, ci, i) for si, (split, n) in enumerate((("train", train_per_class), ("val", val_per_class)))
                for ci in range(n_classes) for i in range(n)]
        for split, si, ci, i in tqdm(jobs, desc=f"generating {root.name}", disable=not progress, leave=False):
            colour, shape = combos[ci]
            rng = np.random.default_rng([int(seed), si, ci, i])
            img = _draw_sample(colour, shape, int(image_size), rng)
            with atomic_path(root / split / f"{colour} {shape}" / f"{i:04d}.png") as tmp:
                img.save(tmp, format="PNG", optimize=False)

    return _build_once(root, manifest, ".png", write)


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):  # none, or unreadable
        return None


def _is_current(root: Path, manifest: dict, suffix: str) -> bool:
    """Whether ``root`` holds this very dataset, complete: its manifest and every file."""
    if _read_manifest(root) != manifest:
        return False
    folders = [(root / split / cls, n) for split in ("train", "val") for cls, n in manifest["counts"][split].items()]
    return all(d.is_dir() and sum(p.endswith(suffix) for p in os.listdir(d)) == n for d, n in folders)


def _write_manifest(root: Path, manifest: dict) -> None:
    with atomic_path(root / "manifest.json") as tmp:
        tmp.write_text(json.dumps(manifest, indent=2))


def _build_once(root: Path, manifest: dict, suffix: str, write: Callable[[], None]) -> Path:
    """``root`` holding the dataset ``manifest`` describes: reused, else written by ``write()``, its manifest last."""
    if _is_current(root, manifest, suffix):
        return root
    with build_lock(root):
        if _is_current(root, manifest, suffix):
            return root  # another process wrote it while this one waited for the lock
        generator, old = manifest["generator"], _read_manifest(root)
        if (root / "manifest.json").is_file():
            if not isinstance(old, dict) or old.get("generator") != generator:
                raise ValueError(f"{root}: manifest.json was not written by {generator}; "
                                 "refusing to overwrite it (pick another root)")
            logger.info("generated dataset at %s has other parameters or is incomplete; regenerating", root)
            for sub in ("train", "val"):
                if (root / sub).exists():
                    shutil.rmtree(root / sub)
        elif root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise ValueError(f"{root}: exists and is not empty but has no manifest.json from {generator}; "
                             "refusing to write into it (pick an empty or new folder)")
        root.mkdir(parents=True, exist_ok=True)
        _write_manifest(root, {**manifest, "complete": False})
        write()
        _write_manifest(root, manifest)
    return root


def write_random_jpeg(job: tuple[str, int, int, int]) -> int:
    """Write one JPEG (smooth colour field plus noise, sides in lo..hi px) from ``(path, seed, lo, hi)``; its bytes."""
    path, seed, lo, hi = job
    rng = np.random.default_rng(seed)
    w, h = (int(v) for v in rng.integers(lo, hi + 1, size=2))
    low = rng.integers(0, 256, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.int16)
    img = np.clip(img + rng.integers(-14, 15, size=img.shape), 0, 255).astype(np.uint8)  # texture
    with atomic_path(path) as tmp:  # a name of its own, renamed when whole
        Image.fromarray(img).save(tmp, format="JPEG", quality=90)
    return os.path.getsize(path)


def write_random_jpegs(jobs: Sequence[tuple[str, int, int, int]], workers: int = 1, chunksize: int = 16,
                       progress: bool = False, desc: str = "writing JPEGs") -> list[int]:
    """``write_random_jpeg`` for every job, over ``workers`` forked processes; the files' sizes."""
    with mp.get_context("fork").Pool(workers) if workers > 1 else contextlib.nullcontext() as pool:
        sizes = pool.imap(write_random_jpeg, jobs, chunksize=chunksize) if pool else map(write_random_jpeg, jobs)
        return list(tqdm(sizes, total=len(jobs), desc=desc, disable=not progress, leave=False))


IMAGENET_LIKE_NAME = "mvlip_utils.generated.make_imagenet_like_dataset"
IMAGENET_LIKE_VERSION = 1


def imagenet_wnids(n_classes: int) -> list[str]:
    """The first ``n_classes`` of ImageNet-1k's wnids in sorted order (timm's ImageNetInfo)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_label_name(i) for i in range(n_classes)]


def make_imagenet_like_dataset(root, n_classes: int = 1000, train_per_class: int = 4, val_per_class: int = 4,
                               seed: int = 0, min_side: int = 300, max_side: int = 500,
                               workers: int | None = None, progress: bool = True) -> Path:
    """Write (or reuse) ``root/{train,val}/<wnid>/<wnid>_NNNN.JPEG`` for ImageNet-1k's first ``n_classes`` wnids:
    random JPEGs of ``min_side``..``max_side`` px, each from its own seed, by ``workers`` processes
    (default: the CPU count, at most 32)."""
    root = Path(root)
    wnids = imagenet_wnids(n_classes)
    manifest = _manifest(IMAGENET_LIKE_NAME, IMAGENET_LIKE_VERSION,
                         {"n_classes": n_classes, "train_per_class": int(train_per_class),
                          "val_per_class": int(val_per_class), "seed": int(seed), "min_side": int(min_side),
                          "max_side": int(max_side)},
                         wnids)

    def write() -> None:
        jobs = []
        for si, (split, n) in enumerate((("train", train_per_class), ("val", val_per_class))):
            for ci, wnid in enumerate(wnids):  # each file's seed drawn from (seed, split, class, index)
                jobs += [(str(root / split / wnid / f"{wnid}_{i:04d}.JPEG"),
                          int(np.random.SeedSequence([int(seed), si, ci, i]).generate_state(1)[0]), min_side, max_side)
                         for i in range(int(n))]
        write_random_jpegs(jobs, workers or max(1, min(32, os.cpu_count() or 1)), progress=progress,
                           desc=f"generating {root.name}")

    return _build_once(root, manifest, ".JPEG", write)
