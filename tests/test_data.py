"""Tests for mvlip_utils.data.folders and .cache: tiny datasets under tmp_path, CPU only, a few seconds in all."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from mvlip_utils.data import cache as C
from mvlip_utils.data import folders as D
from mvlip_utils.data import generated as G


def _rand_img(rng, size=(20, 16), mode="RGB") -> Image.Image:
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(arr, "RGB").convert(mode) if mode != "RGB" else Image.fromarray(arr, "RGB")


def _make_folder(root: Path, spec: dict[str, dict[str, int]], ext=".png", seed=0) -> Path:
    """spec: {"train": {"cls": n_images}, "val": {...}} -> ImageFolder of small random images."""
    rng = np.random.default_rng(seed)
    for split, classes in spec.items():
        for cls, n in classes.items():
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                _rand_img(rng).save(d / f"{i:03d}{ext}")
    return root


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return G.make_generated_dataset(tmp_path_factory.mktemp("gen") / "shapes", n_classes=4, train_per_class=5,
                                    val_per_class=2, image_size=32, seed=3, progress=False)


# ----------------------------------------------------------------------------------- templates
def test_templates_are_the_papers_ten():
    assert D.TEMPLATES == (
        "a photo of a {}", "a picture of a {}", "an image of a {}", "a {} in the photo", "this is a {}",
        "this is a photo of a {}", "a cropped photo of a {}", "a good photo of a {}",
        "a close-up photo of a {}", "a bright photo of a {}")


def test_sample_captions_reproducible_and_use_templates():
    names = ["red circle", "blue square"]
    labels = torch.tensor([0, 1, 1, 0] * 10)
    a = D.sample_captions(labels, names, torch.Generator().manual_seed(1))
    b = D.sample_captions(labels, names, torch.Generator().manual_seed(1))
    assert a == b and len(a) == 40
    for cap, y in zip(a, labels.tolist()):
        assert cap in {t.format(names[y]) for t in D.TEMPLATES}
    assert len(set(a)) > 5  # templates actually vary


# ---------------------------------------------------------------------------------- class names
def test_wnid_mapping_matches_open_clip_order():
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    wnids = [info.index_to_label_name(i) for i in range(1000)]
    assert wnids == sorted(wnids)
    idx = [0, 1, 2, 207, 999]
    assert D.class_names_for_folders([wnids[i] for i in idx]) == [open_clip.IMAGENET_CLASSNAMES[i] for i in idx]
    assert D.class_names_for_folders(["n01440764", "n01443537"]) == ["tench", "goldfish"]
    assert D.class_names_for_folders(wnids) == list(open_clip.IMAGENET_CLASSNAMES)


def test_folder_names_and_wnid_errors():
    assert D.class_names_for_folders(["red_circle", "blue square", "golden_retriever"]) == [
        "red circle", "blue square", "golden retriever"]
    with pytest.raises(ValueError, match="n00000001"):
        D.class_names_for_folders(["n01440764", "n00000001"])
    with pytest.raises(ValueError, match="mixes.*n01440764.*cat"):
        D.class_names_for_folders(["n01440764", "cat"])


# ------------------------------------------------------------------------------------ transform
def test_clip_transform_matches_open_clip_and_normalises():
    tf = D.clip_transform(32)
    names = [type(t).__name__ for t in tf.transforms]
    assert names[:2] == ["Resize", "CenterCrop"] and names[-1] == "Normalize"
    assert "bicubic" in str(tf.transforms[0].interpolation).lower()
    ref = open_clip.image_transform(32, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                    std=open_clip.OPENAI_DATASET_STD)
    img = _rand_img(np.random.default_rng(0), size=(50, 40))
    out = tf(img)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    torch.testing.assert_close(out, ref(img), rtol=0, atol=0)
    # a constant colour maps to ((c/255) - mean) / std
    flat = tf(Image.new("RGB", (40, 60), (200, 100, 50)))
    expect = (torch.tensor([200, 100, 50]) / 255 - torch.tensor(open_clip.OPENAI_DATASET_MEAN)) / torch.tensor(
        open_clip.OPENAI_DATASET_STD)
    torch.testing.assert_close(flat.mean((1, 2)), expect.float(), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------- datasets
def test_load_splits_generated(generated):
    train, val, names = D.load_splits(generated, image_size=24, progress=False)
    assert names == ["blue square", "green triangle", "red circle", "yellow star"]  # sorted folders
    assert len(train) == 20 and len(val) == 8 and train.skipped == []
    x, y = train[7]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and isinstance(y, int)
    assert names[y] == Path(train.samples[7][0]).parent.name
    assert sorted(set(val.targets)) == [0, 1, 2, 3]


def test_load_splits_imagenet_layout(tmp_path):
    root = _make_folder(tmp_path / "imagenet-mini",
                        {"train": {"n01443537": 2, "n01440764": 2}, "val": {"n01440764": 1, "n01443537": 1}},
                        ext=".JPEG")
    train, val, names = D.load_splits(root, image_size=16, progress=False)
    assert train.classes == ["n01440764", "n01443537"] and names == ["tench", "goldfish"]
    assert len(train) == 4 and len(val) == 2 and train[0][0].shape == (3, 16, 16)


@pytest.mark.parametrize("case", ["no_root", "no_train", "no_val", "no_classes", "val_extra", "empty_train_class",
                                  "unknown_wnid", "mixed"])
def test_load_splits_errors_name_the_thing(tmp_path, case):
    root = tmp_path / "ds"
    spec = {"train": {"cat": 1, "dog": 1}, "val": {"cat": 1}}
    if case != "no_root":
        _make_folder(root, spec)
    if case == "no_root":
        exc, match = FileNotFoundError, str(root)
    elif case == "no_train":
        shutil.rmtree(root / "train")
        exc, match = FileNotFoundError, str(root / "train")
    elif case == "no_val":
        shutil.rmtree(root / "val")
        exc, match = FileNotFoundError, str(root / "val")
    elif case == "no_classes":
        shutil.rmtree(root / "train")
        (root / "train").mkdir()
        (root / "train" / "stray.png").write_bytes(b"")
        exc, match = ValueError, str(root / "train") + ".*no class folders"
    elif case == "val_extra":
        _make_folder(root, {"val": {"zebra": 1, "yak": 1}})
        exc, match = ValueError, r"absent from train.*\['yak', 'zebra'\]"
    elif case == "empty_train_class":
        (root / "train" / "emu").mkdir()
        (root / "train" / "emu" / "readme.txt").write_text("not an image")
        exc, match = ValueError, re.escape(str(root / "train" / "emu"))
    elif case == "unknown_wnid":
        shutil.rmtree(root)
        _make_folder(root, {"train": {"n01440764": 1, "n99999999": 1}, "val": {"n01440764": 1}})
        exc, match = ValueError, "n99999999"
    else:  # mixed
        shutil.rmtree(root)
        _make_folder(root, {"train": {"n01440764": 1, "cat": 1}, "val": {"cat": 1}})
        exc, match = ValueError, "mixes"
    with pytest.raises(exc, match=match):
        D.load_splits(root, image_size=8, progress=False)


def test_corrupt_files_skipped_and_non_images_ignored(tmp_path, caplog):
    root = _make_folder(tmp_path / "ds", {"train": {"cat": 3, "dog": 2}, "val": {"cat": 1, "dog": 1}})
    good = root / "train" / "cat" / "000.png"
    (root / "train" / "cat" / "garbage.jpg").write_bytes(b"this is not a jpeg at all")
    (root / "train" / "cat" / "truncated.png").write_bytes(good.read_bytes()[:-40])
    jpg = root / "train" / "dog" / "ok.jpg"
    _rand_img(np.random.default_rng(5), size=(64, 64)).save(jpg, quality=90)
    (root / "train" / "dog" / "cut.JPG").write_bytes(jpg.read_bytes()[: jpg.stat().st_size // 2])
    (root / "train" / "dog" / "notes.txt").write_text("hello")
    (root / "train" / "dog" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "train" / "dog" / "._ok.jpg").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    with caplog.at_level(logging.WARNING, logger="mvlip_utils.data"):
        train, val, _ = D.load_splits(root, image_size=8, progress=False)
    skipped = sorted(Path(p).name for p, _ in train.skipped)
    assert skipped == ["cut.JPG", "garbage.jpg", "truncated.png"]
    assert len(train) == 3 + 2 + 1  # originals + ok.jpg
    assert any("skipped 3" in r.getMessage() and "garbage.jpg" in r.getMessage() for r in caplog.records)
    # every kept sample loads (no surprise in a worker)
    batch = next(iter(D.make_loader(train, batch_size=len(train), shuffle=False, drop_last=False)))
    assert batch[0].shape == (len(train), 3, 8, 8)


def test_empty_val_class_is_a_warning(tmp_path, caplog):
    root = _make_folder(tmp_path / "ds", {"train": {"cat": 1, "dog": 1}, "val": {"cat": 1}})
    (root / "val" / "dog").mkdir()
    with caplog.at_level(logging.WARNING, logger="mvlip_utils.data"):
        train, val, names = D.load_splits(root, image_size=8, progress=False)
    assert len(val) == 1 and val.empty_classes == ["dog"] and names == ["cat", "dog"]
    assert any("dog" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "LA", "1", "P_transparent"])
def test_odd_modes_load_as_rgb(tmp_path, mode):
    rng = np.random.default_rng(1)
    d = tmp_path / "ds" / "train" / "thing"
    d.mkdir(parents=True)
    (tmp_path / "ds" / "val").mkdir()
    if mode == "I;16":
        arr = np.full((12, 18), 40000, dtype=np.uint16)
        img = Image.fromarray(arr)  # uint16 -> I;16
        path = d / "x.png"
    elif mode == "P_transparent":
        img = _rand_img(rng, (18, 12)).convert("P")
        img.info["transparency"] = 0
        path = d / "x.png"
    else:
        img = _rand_img(rng, (18, 12), mode)
        path = d / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path, **({"transparency": 0} if mode == "P_transparent" else {}))
    with Image.open(path) as check:
        assert check.mode.split(";")[0] == ("P" if mode == "P_transparent" else mode).split(";")[0]
    ds = D.ImageFolderSplit(tmp_path / "ds" / "train", ["thing"], image_size=10, progress=False)
    assert ds.skipped == []
    x, y = ds[0]
    assert x.shape == (3, 10, 10) and y == 0 and torch.isfinite(x).all()
    if mode == "I;16":  # 40000/65535 of full scale, not clipped to white
        rgb = np.asarray(D.load_image(path))
        assert rgb.shape == (12, 18, 3) and abs(int(rgb[0, 0, 0]) - round(40000 / 257)) <= 1


# -------------------------------------------------------------------------------------- loaders
def test_loader_is_deterministic_for_a_seed(generated):
    train, _, _ = D.load_splits(generated, image_size=8, progress=False)

    def order(seed, workers=0):
        return torch.cat([y for _, y in D.make_loader(train, 4, shuffle=True, drop_last=True,
                                                      num_workers=workers, seed=seed)]).tolist()

    a, b, c = order(0), order(0), order(1)
    assert a == b and a != c and len(a) == 20
    assert sorted(a) == sorted(train.targets)
    assert order(0, workers=2) == a  # same order with workers
    loader = D.make_loader(train, 3, shuffle=False, drop_last=True)
    assert len(loader) == 6 and [int(v) for v in next(iter(loader))[1]] == train.targets[:3]


# -------------------------------------------------------------------------------- uint8 cache
def test_cache_matches_transform(tmp_path, generated):
    copy = shutil.copytree(generated, tmp_path / "shapes")  # this test rewrites an image
    train, _, _ = D.load_splits(copy, image_size=20, progress=False)
    path = C.cache_preprocessed(train, tmp_path / "cache" / "train.pt", image_size=20, progress=False)
    cached = C.CachedImageDataset(path)
    assert len(cached) == len(train) and cached.images.dtype == torch.uint8
    assert cached.images.shape == (len(train), 3, 20, 20) and cached.targets == train.targets
    xb = torch.stack([cached[i][0] for i in range(len(cached))])
    got = C.normalize_on_device(xb, "cpu")
    want = torch.stack([train[i][0] for i in range(len(train))])
    assert torch.equal(got, want)  # bit-identical inputs: why data_cache is in profiles.RUN_IRRELEVANT
    # reused when nothing changed; rebuilt when the size changes
    mtime = path.stat().st_mtime_ns
    assert C.cache_preprocessed(train, path, image_size=20, progress=False) == path
    assert path.stat().st_mtime_ns == mtime
    # an image rewritten at the same path (e.g. a regenerated dataset) is cached again, not served stale
    first = Path(train.samples[0][0])
    Image.new("RGB", (24, 24), (0, 255, 0)).save(first)
    os.utime(first, ns=(mtime + 10**9, mtime + 10**9))
    C.cache_preprocessed(train, path, image_size=20, progress=False)
    assert path.stat().st_mtime_ns != mtime
    assert C.CachedImageDataset(path)[0][0][:, 10, 10].tolist() == [0, 255, 0]
    C.cache_preprocessed(train, path, image_size=12, progress=False)
    assert C.CachedImageDataset(path).images.shape[-1] == 12
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        C.CachedImageDataset(tmp_path / "nope.pt")


def test_the_cache_follows_the_class_list_a_train_only_class_shifts_the_labels(tmp_path):
    """A cache is labelled by indices into the class list: a class added to train/ alone (sorting first)
    shifts every val label, so the val cache, whose images are unchanged, is built again with the new labels."""
    root = _make_folder(tmp_path / "ds", {"train": {"cat": 2, "dog": 2}, "val": {"cat": 1, "dog": 2}})
    _, val, names = D.load_splits(root, image_size=8, progress=False)
    path = C.cache_preprocessed(val, tmp_path / "cache" / "val.pt", image_size=8, progress=False)
    assert names == ["cat", "dog"] and C.CachedImageDataset(path).targets == [0, 1, 1]
    built = path.stat().st_mtime_ns
    assert C.cache_preprocessed(val, path, image_size=8, progress=False) == path
    assert path.stat().st_mtime_ns == built  # the same images and classes: reused
    _make_folder(root, {"train": {"aardvark": 2}}, seed=1)  # a training-only class, first in sorted order
    _, val, names = D.load_splits(root, image_size=8, progress=False)
    assert names == ["aardvark", "cat", "dog"] and val.targets == [1, 2, 2]
    C.cache_preprocessed(val, path, image_size=8, progress=False)
    cached = C.CachedImageDataset(path)
    assert path.stat().st_mtime_ns != built
    assert cached.targets == val.targets == [1, 2, 2] and cached.classes == ["aardvark", "cat", "dog"]
    assert [cached[i][1] for i in range(len(cached))] == [1, 2, 2]
