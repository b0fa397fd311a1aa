"""Tests for mvlip_utils.data.generated: the coloured-shapes dataset (smoke) and the ImageNet-mini-shaped JPEG
folder (speed), written under tmp_path, CPU only, a few seconds in all."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import open_clip
import pytest
from PIL import Image

from mvlip_utils.data import folders as D
from mvlip_utils.data import generated as G


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    return G.make_generated_dataset(tmp_path_factory.mktemp("gen") / "shapes", n_classes=4, train_per_class=5,
                                    val_per_class=2, image_size=32, seed=3, progress=False)


# --------------------------------------------------------------------------- coloured shapes
def test_generated_layout_counts_and_manifest(generated):
    m = json.loads((generated / "manifest.json").read_text())
    assert m["classes"] == ["red circle", "blue square", "green triangle", "yellow star"]
    assert m["params"] == {"n_classes": 4, "train_per_class": 5, "val_per_class": 2, "image_size": 32, "seed": 3}
    assert m["counts"]["train_total"] == 20 and m["counts"]["val_total"] == 8
    for split, n in (("train", 5), ("val", 2)):
        assert sorted(p.name for p in (generated / split).iterdir()) == sorted(m["classes"])
        for cls in m["classes"]:
            files = sorted((generated / split / cls).iterdir())
            assert [f.name for f in files] == [f"{i:04d}.png" for i in range(n)]
            with Image.open(files[0]) as im:
                assert im.size == (32, 32) and im.mode == "RGB"
    # images within a class differ (position/size/rotation/noise vary)
    a, b = (np.asarray(Image.open(generated / "train" / "red circle" / f"000{i}.png")) for i in (0, 1))
    assert not np.array_equal(a, b)


def test_generated_is_deterministic_and_seed_dependent(tmp_path, generated):
    again = G.make_generated_dataset(tmp_path / "again", n_classes=4, train_per_class=5, val_per_class=2,
                                     image_size=32, seed=3, progress=False)
    assert _digest(again) == _digest(generated)
    other = G.make_generated_dataset(tmp_path / "other", n_classes=4, train_per_class=5, val_per_class=2,
                                     image_size=32, seed=4, progress=False)
    da, db = _digest(other), _digest(generated)
    assert da.keys() == db.keys()
    assert sum(da[k] != db[k] for k in da if k.endswith(".png")) == 28


def test_generated_colour_is_the_class_colour(generated):
    """The shape's pixels carry the class colour: the most saturated pixels of a 'red' image are red."""
    for cls, channel in (("red circle", 0), ("green triangle", 1), ("blue square", 2)):
        arr = np.asarray(Image.open(generated / "train" / cls / "0000.png")).astype(float)
        sat = arr.max(-1) - arr.min(-1)
        top = arr[sat > np.quantile(sat, 0.9)].mean(0)
        assert top.argmax() == channel, (cls, top)


def test_generated_skips_identical_and_regenerates_changed(tmp_path):
    root = tmp_path / "g"
    G.make_generated_dataset(root, n_classes=2, train_per_class=2, val_per_class=1, image_size=16, progress=False)
    marker = root / "train" / "red circle" / "0000.png"
    mtime = marker.stat().st_mtime_ns
    G.make_generated_dataset(root, n_classes=2, train_per_class=2, val_per_class=1, image_size=16, progress=False)
    assert marker.stat().st_mtime_ns == mtime  # identical manifest: nothing rewritten
    G.make_generated_dataset(root, n_classes=3, train_per_class=1, val_per_class=1, image_size=16, progress=False)
    assert sorted(p.name for p in (root / "train").iterdir()) == ["blue square", "green triangle", "red circle"]
    assert len(list((root / "train" / "red circle").iterdir())) == 1  # old files removed, not mixed
    assert json.loads((root / "manifest.json").read_text())["params"]["n_classes"] == 3
    # a deleted file makes the identical manifest insufficient: regenerated
    marker = root / "train" / "red circle" / "0000.png"
    marker.unlink()
    G.make_generated_dataset(root, n_classes=3, train_per_class=1, val_per_class=1, image_size=16, progress=False)
    assert marker.is_file()


def test_generated_refuses_foreign_folder_and_bad_params(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match=re.escape(str(foreign))):
        G.make_generated_dataset(foreign, progress=False)
    assert (foreign / "notes.txt").read_text() == "precious"
    with pytest.raises(ValueError, match="n_classes"):
        G.make_generated_dataset(tmp_path / "x", n_classes=65, progress=False)
    with pytest.raises(ValueError, match="image_size"):
        G.make_generated_dataset(tmp_path / "x", image_size=8, progress=False)
    assert len(G.generated_class_combos(64)) == len(set(G.generated_class_combos(64))) == 64



# ------------------------------------------------------------------------------ random JPEG files
def test_random_jpegs_are_real_deterministic_files_within_the_size_range(tmp_path):
    from PIL import Image as PILImage

    jobs = [(str(tmp_path / f"{i}.jpg"), 7 + i, 40, 60) for i in range(3)]
    sizes = G.write_random_jpegs(jobs, workers=2, chunksize=1)
    first = [(tmp_path / f"{i}.jpg").read_bytes() for i in range(3)]
    assert sizes == [len(b) for b in first]
    assert G.write_random_jpegs(jobs[:1]) == sizes[:1] and (tmp_path / "0.jpg").read_bytes() == first[0]
    for i in range(3):
        with PILImage.open(tmp_path / f"{i}.jpg") as img:
            assert img.format == "JPEG" and all(40 <= side <= 60 for side in img.size)


# ---------------------------------------------------------------------- ImageNet-mini-shaped JPEGs
def test_imagenet_like_layout_names_sizes_and_determinism(tmp_path):
    root = G.make_imagenet_like_dataset(tmp_path / "inet", n_classes=5, train_per_class=3, val_per_class=2,
                                        seed=1, min_side=40, max_side=70, workers=2, progress=False)
    manifest = json.loads((root / "manifest.json").read_text())
    wnids = manifest["classes"]
    assert wnids == G.imagenet_wnids(5) and wnids[0] == "n01440764"  # ImageNet-1k's first wnid (tench)
    assert manifest["counts"]["train_total"] == 15 and manifest["counts"]["val_total"] == 10
    for split, n in (("train", 3), ("val", 2)):
        assert sorted(p.name for p in (root / split).iterdir()) == wnids
        files = sorted((root / split / wnids[0]).iterdir())
        assert [f.name for f in files] == [f"{wnids[0]}_{i:04d}.JPEG" for i in range(n)]
        for f in files:
            with Image.open(f) as im:
                assert im.format == "JPEG" and all(40 <= side <= 70 for side in im.size)
    # the study reads it as ImageNet-mini: wnid folders -> open_clip's CLIP ImageNet class names
    train, val, classnames = D.load_splits(root, image_size=32, progress=False)
    assert classnames == list(open_clip.IMAGENET_CLASSNAMES[:5]) and len(train) == 15 and len(val) == 10
    # same parameters: the same bytes, in another folder; another seed: other bytes
    again = G.make_imagenet_like_dataset(tmp_path / "again", n_classes=5, train_per_class=3, val_per_class=2,
                                         seed=1, min_side=40, max_side=70, workers=1, progress=False)
    assert _digest(again) == _digest(root)
    other = G.make_imagenet_like_dataset(tmp_path / "other", n_classes=5, train_per_class=3, val_per_class=2,
                                         seed=2, min_side=40, max_side=70, workers=1, progress=False)
    assert sum(a != b for a, b in zip(_digest(other).values(), _digest(root).values())) >= 25


def test_imagenet_like_is_reused_when_complete_and_rewritten_when_changed(tmp_path):
    kwargs = dict(n_classes=3, train_per_class=2, val_per_class=1, min_side=32, max_side=40, workers=1,
                  progress=False)
    root = G.make_imagenet_like_dataset(tmp_path / "d", **kwargs)
    marker = next((root / "train").rglob("*.JPEG"))
    mtime = marker.stat().st_mtime_ns
    G.make_imagenet_like_dataset(root, **kwargs)
    assert marker.stat().st_mtime_ns == mtime  # complete and identical: nothing written
    G.make_imagenet_like_dataset(root, **{**kwargs, "train_per_class": 1})
    assert len(list((root / "train").rglob("*.JPEG"))) == 3  # old files removed, not mixed
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match=re.escape(str(foreign))):
        G.make_imagenet_like_dataset(foreign, **kwargs)
