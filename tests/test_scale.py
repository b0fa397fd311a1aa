"""report.scale: the paper's whole study projected from a GPU edition's measured epochs, for one seed and for
several, its floor at the GPU's datasheet peak, and the projection file rewritten only when its values change."""

import json

import pandas as pd
import pytest

from mvlip_utils.data.files import read_json, write_json
from mvlip_utils.report import scale
from mvlip_utils.settings.paper import paper_reference

REF = paper_reference()
EPOCHS, TRAIN, VAL = 20, 34720, 3923  # the paper's study: 20 epochs of ImageNet-mini in whole batches of 32


def timings(train_ips, val_ips, checkpoint_s=2.0, setup_s=30.0, first_epoch_s=999.0):
    """Two epochs of 3,200 training and 1,000 validation images; the first slower (warm-up, compilation)."""
    return pd.DataFrame([
        {"epoch": 1, "train_seconds": first_epoch_s, "train_images": 3200, "validation_seconds": 99.0,
         "val_images": 1000, "checkpoint_seconds": 9.0, "setup_seconds": setup_s},  # only its extra time is used
        {"epoch": 2, "train_seconds": 3200 / train_ips, "train_images": 3200, "validation_seconds": 1000 / val_ips,
         "val_images": 1000, "checkpoint_seconds": checkpoint_s, "setup_seconds": setup_s}])


def entry(encoder, train_ips, val_ips, flops=None, seeds=None, **kwargs):
    """An encoder's runs as load_edition gives them: one per seed (``seeds``: {seed: timings kwargs})."""
    seeds = seeds or {0: {}}
    runs = [{"seed": s, "timings": timings(train_ips, val_ips, **{**kwargs, **extra})} for s, extra in seeds.items()]
    rows = ([{"kind": "flops", "mode": "train", "flops_per_image": flops[0]},
             {"kind": "flops", "mode": "inference", "flops_per_image": flops[1]}] if flops else [])
    return {"encoder": encoder, "runs": runs, "benchmark": pd.DataFrame(rows) if rows else None,
            "config": {"encoder": encoder, "device_name": "NVIDIA H200", "precision": "fp32-tf32conv",
                       "train_step": "graphed"},
            "benchmark_provenance": {"git_commit": "abc", "date_utc": "2026-11-28", "command": "c", "driver": "d",
                                     "versions": {"torch": "2.14"}}}


def test_the_papers_study_in_numbers():
    assert scale.study_size(REF) == {"epochs": EPOCHS, "train_images": TRAIN, "val_images": VAL, "batch_size": 32}


def test_projection_scales_the_last_epoch_to_the_papers_counts():
    p = scale.encoder_projection(entry("swin", train_ips=400.0, val_ips=800.0), REF)
    assert p["measured_epoch"] == 2 and p["train_images_per_s"] == pytest.approx(400.0)
    assert p["validation_images_per_s"] == pytest.approx(800.0)
    assert p["train_minutes"] == pytest.approx(EPOCHS * TRAIN / 400 / 60)
    assert p["validation_minutes"] == pytest.approx(EPOCHS * VAL / 800 / 60)
    assert p["checkpoint_minutes"] == pytest.approx(EPOCHS * 2.0 / 60)
    # the first epoch's extra time (999 s for 3,200 images that take 8 s at the last epoch's rate) and the
    # set-up, once per run
    assert p["first_epoch_extra_seconds"] == pytest.approx(999.0 - 8.0)
    assert p["minutes"] == pytest.approx(p["train_minutes"] + p["validation_minutes"] + p["checkpoint_minutes"]
                                         + (999.0 - 8.0) / 60 + 30.0 / 60)
    assert p["warmup_minutes"] + p["setup_minutes"] == pytest.approx((991.0 + 30.0) / 60)
    assert (p["device_name"], p["precision"], p["train_step"]) == ("NVIDIA H200", "fp32-tf32conv", "graphed")
    assert "fp32_floor_minutes" not in p  # no counted FLOPs
    assert scale.encoder_projection({"encoder": "swin", "runs": [{"timings": None}], "config": {}}, REF) is None


def test_a_further_seed_costs_its_epochs_and_the_second_runs_set_up_and_warm_up():
    # the second seed in the same process: a short set-up and no compilation (the prompt cache, the data are there)
    two = entry("swin", 400.0, 800.0, seeds={0: {}, 1: {"setup_s": 3.0, "first_epoch_s": 9.0}})
    p = scale.encoder_projection(two, REF)
    epochs = p["train_minutes"] + p["validation_minutes"] + p["checkpoint_minutes"]
    assert p["further_seed_measured"] is True
    assert p["further_seed_minutes"] == pytest.approx(epochs + (3.0 + 1.0) / 60)
    assert p["minutes"] == pytest.approx(epochs + (30.0 + 991.0) / 60)
    # one seed measured: a further one is counted with the first's set-up and warm-up
    one = scale.encoder_projection(entry("swin", 400.0, 800.0), REF)
    assert one["further_seed_measured"] is False and one["further_seed_minutes"] == pytest.approx(one["minutes"])
    proj = scale.study_projection({"swin": two}, REF, seeds=3)
    assert proj["seeds"] == 3
    assert proj["per_encoder"][0]["seeds_minutes"] == pytest.approx(p["minutes"] + 2 * p["further_seed_minutes"])


def test_no_warm_up_without_a_first_epoch_and_a_later_one_or_when_the_first_is_no_slower():
    t = timings(400.0, 800.0)
    assert scale.first_epoch_extra_seconds(t.iloc[1:]) == 0.0  # one epoch, and not epoch 1
    assert scale.first_epoch_extra_seconds(t.assign(epoch=[2, 3])) == 0.0  # a resumed run's timings
    assert scale.first_epoch_extra_seconds(t.assign(train_seconds=[7.0, 8.0])) == 0.0  # epoch 1 no slower
    assert scale.first_epoch_extra_seconds(None) == 0.0


def test_the_study_on_one_gpu_and_with_one_gpu_per_encoder_and_its_floor():
    runs = {"mambavision": entry("mambavision", 450, 900, flops=(90e9, 30e9)),
            "swin": entry("swin", 380, 700, flops=(92e9, 31e9)),
            "vit": entry("vit", 1200, 1500, flops=(26e9, 9e9))}
    proj = scale.study_projection(runs, REF, seeds=3)
    per = {p["encoder"]: p for p in proj["per_encoder"]}
    assert proj["encoders"] == ["mambavision", "swin", "vit"] and proj["study"] == scale.study_size(REF)
    assert proj["one_gpu_minutes"] == pytest.approx(sum(p["minutes"] for p in per.values()))
    assert proj["one_gpu_per_encoder_minutes"] == pytest.approx(per["swin"]["minutes"])  # the slowest encoder
    assert proj["one_gpu_seeds_minutes"] == pytest.approx(sum(p["seeds_minutes"] for p in per.values()))
    assert proj["one_gpu_per_encoder_seeds_minutes"] == pytest.approx(per["swin"]["seeds_minutes"])
    floor = EPOCHS * (TRAIN * 92e9 + VAL * 31e9) / 66.9e12 / 60  # every counted FLOP at the H200's fp32 peak
    assert per["swin"]["fp32_floor_minutes"] == pytest.approx(floor)
    assert proj["fp32_floor_minutes"] == pytest.approx(sum(p["fp32_floor_minutes"] for p in per.values()))
    assert per["swin"]["utilisation"] == pytest.approx(floor / per["swin"]["minutes"]) and 0 < per["swin"]["utilisation"] < 1
    assert proj["provenance"]["swin"]["git_commit"] == "abc" and proj["provenance"]["vit"]["versions"] == {"torch": "2.14"}
    json.dumps(proj, allow_nan=False)  # strict JSON: writable as study_projection.json
    # one encoder without counted FLOPs: no floor for the study
    runs["vit"] = entry("vit", 1200, 1500)
    assert scale.study_projection(runs, REF)["fp32_floor_minutes"] is None
    empty = scale.study_projection({}, REF)
    assert empty["per_encoder"] == [] and empty["one_gpu_minutes"] is None


def test_the_projection_table_by_stage():
    proj = scale.study_projection({"swin": entry("swin", 400.0, 800.0), "vit": entry("vit", 900.0, 2000.0)}, REF,
                                  seeds=3)
    table = scale.projection_table(proj, {"swin": "Swin-B", "vit": "ViT-B/32"})
    assert table.index.tolist() == ["Swin-B", "ViT-B/32"]
    assert table.columns.tolist() == ["training", "validation", "checkpoint waits", "first-epoch warm-up", "set-up",
                                      "one seed", "3 seeds"]
    assert table.loc["Swin-B", "first-epoch warm-up"] == pytest.approx(991.0 / 60)
    assert table.iloc[:, :5].sum(axis=1).values == pytest.approx(table["one seed"].values)


def test_training_utilisation_against_the_datasheet_peak():
    u = scale.training_utilisation(669.0, {"train": 1e10, "inference": 3e9}, "NVIDIA H200", "fp32")
    assert u["tflops_per_s"] == pytest.approx(6.69) and u["utilisation"] == pytest.approx(0.1)
    assert scale.training_utilisation(10.0, {"train": 1e9}, "CPU (x86_64, 2 cores)", "fp32")["utilisation"] is None


def test_the_projection_file_is_rewritten_only_when_its_values_change(tmp_path):
    """A recorded edition's study_projection.json stays as recorded when the book is built elsewhere and the
    run files read back differ only in a float's last bit; any real change is written."""
    path = tmp_path / "study_projection.json"
    proj = {"one_gpu_minutes": 81.14171990385356, "per_encoder": [{"encoder": "swin", "setup_seconds": 10.992498039999989}],
            "fp32_floor_minutes": None}
    assert scale.save_projection(path, proj) and read_json(path) == proj
    recorded = path.read_bytes()
    last_bit = {**proj, "per_encoder": [{"encoder": "swin", "setup_seconds": 10.992498039999987}]}
    assert not scale.save_projection(path, last_bit) and path.read_bytes() == recorded
    changed = {**proj, "one_gpu_minutes": 80.0}
    assert scale.save_projection(path, changed) and read_json(path)["one_gpu_minutes"] == 80.0
    assert scale.save_projection(path, {**changed, "seeds": 3})  # a new key is a change
    write_json(path, {**changed, "seeds": 3})
    assert not scale.save_projection(path, {**changed, "seeds": 3})
