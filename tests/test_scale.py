"""Paper scale: the projection of the paper's study from measured epochs, its floors, the kernel bound from the
edition's own profiled step checks, and what one GPU and several mean for an edition."""

import pandas as pd
import pytest

from mvlip_utils.train import results
from mvlip_utils.report import discussion, scale

REF = results.paper_reference()


def timed_run(encoder, train_ips, val_ips, checkpoint_s=2.0, setup_s=30.0, flops=None, model_only=None,
              first_epoch_s=999.0):
    timings = pd.DataFrame([
        {"epoch": 1, "train_seconds": first_epoch_s, "train_images": 3200, "validation_seconds": 99.0,
         "val_images": 1000, "checkpoint_seconds": 9.0, "setup_seconds": setup_s},  # only its extra time is used
        {"epoch": 2, "train_seconds": 3200 / train_ips, "train_images": 3200, "validation_seconds": 1000 / val_ips,
         "val_images": 1000, "checkpoint_seconds": checkpoint_s, "setup_seconds": setup_s}])
    rows = []
    if flops:
        rows += [{"kind": "flops", "mode": "train", "flops_per_image": flops[0]},
                 {"kind": "flops", "mode": "inference", "flops_per_image": flops[1]}]
    if model_only:
        rows += [{"kind": "model_only", "setting": "paper's conditions, fused AdamW", "mode": "train",
                  "images_per_s": model_only[0]},
                 {"kind": "model_only", "setting": "paper's conditions", "mode": "inference", "images_per_s": model_only[1]}]
    return {"config": {"encoder": encoder, "device_name": "NVIDIA H200", "precision": "fp32-tf32conv",
                       "train_step": "fused"}, "timings": timings, "run_dir": f"results/speed/{encoder}",
            "benchmark": pd.DataFrame(rows) if rows else None,
            "benchmark_provenance": {"git_commit": "abc", "date_utc": "2026-11-28", "command": "c", "driver": "d"}}


def test_projection_scales_the_last_epoch_to_the_papers_counts():
    size = scale.study_size(REF)
    assert size == {"epochs": 20, "train_images": 34720, "val_images": 3923, "batch_size": 32}
    p = scale.encoder_projection(timed_run("swin", train_ips=400.0, val_ips=800.0), REF)
    assert p["measured_epoch"] == 2 and p["train_images_per_s"] == pytest.approx(400.0)
    assert p["train_minutes"] == pytest.approx(20 * 34720 / 400 / 60)
    assert p["validation_minutes"] == pytest.approx(20 * 3923 / 800 / 60)
    assert p["projected_minutes"] == pytest.approx(p["train_minutes"] + p["validation_minutes"]
                                                   + 20 * 2.0 / 60 + (999.0 - 3200 / 400) / 60 + 30.0 / 60)
    assert scale.encoder_projection({"timings": None, "config": {}}, REF) is None


def test_study_projection_one_gpu_per_encoder_and_the_floors():
    runs = {"mambavision": timed_run("mambavision", 450, 900, flops=(90e9, 30e9), model_only=(500, 1100)),
            "swin": timed_run("swin", 380, 700, flops=(92e9, 31e9), model_only=(400, 900)),
            "vit": timed_run("vit", 1200, 1500, flops=(26e9, 9e9), model_only=(1300, 3300))}
    proj = scale.study_projection(runs, REF)
    per = {p["encoder"]: p for p in proj["per_encoder"]}
    assert proj["one_gpu_minutes"] == pytest.approx(sum(p["projected_minutes"] for p in per.values()))
    assert proj["one_gpu_per_encoder_minutes"] == pytest.approx(per["swin"]["projected_minutes"])  # the slowest encoder
    floor = 20 * (34720 * 92e9 + 3923 * 31e9) / 66.9e12 / 60
    assert per["swin"]["fp32_floor_minutes"] == pytest.approx(floor)
    assert proj["fp32_floor_minutes_one_gpu_per_encoder"] == pytest.approx(floor)
    assert per["vit"]["model_only_minutes"] == pytest.approx(20 * (34720 / 1300 + 3923 / 3300) / 60)
    assert 0 < per["swin"]["utilisation"] < 1
    assert proj["provenance"]["swin"]["git_commit"] == "abc"
    text = scale.projection_sentence(proj)
    assert f"{proj['one_gpu_minutes']:.0f} minutes" in text and "missed" in text or "met" in text
    results.write_json("/dev/null", proj)  # strict JSON: writable as study_projection.json


def test_the_first_epochs_warm_up_is_counted_once_per_encoder():
    run = timed_run("swin", train_ips=400.0, val_ips=800.0)
    p = scale.encoder_projection(run, REF)
    # epoch 1: 999 s for 3,200 images; at the last epoch's 400 images/s they take 8 s
    assert p["first_epoch_extra_seconds"] == pytest.approx(999.0 - 3200 / 400)
    assert p["warmup_minutes"] == pytest.approx((999.0 - 8.0) / 60)
    steady = p["train_minutes"] + p["validation_minutes"] + p["checkpoint_minutes"] + p["setup_minutes"]
    assert p["projected_minutes"] == pytest.approx(steady + p["warmup_minutes"])  # once, not once per epoch
    assert p["train_minutes"] == pytest.approx(20 * 34720 / 400 / 60)  # the steady rate, warm-up apart
    proj = scale.study_projection({"swin": run, "vit": timed_run("vit", 900.0, 2000.0)}, REF)
    assert proj["warmup_minutes"] == pytest.approx(sum(q["warmup_minutes"] for q in proj["per_encoder"]))
    assert "counted once per encoder: 991 s (swin)" in scale.projection_sentence(proj)
    table = discussion.projection_table(proj)
    assert table.loc[discussion.tower_label("swin"), "first-epoch warm-up"] == pytest.approx(991.0 / 60)
    assert table[discussion.PROJECTION_STAGES].sum(axis=1).values == pytest.approx(table["projected total"].values)


def test_no_warm_up_without_a_first_epoch_and_a_later_one_or_when_the_first_is_no_slower():
    run = timed_run("swin", train_ips=400.0, val_ips=800.0)
    assert scale.first_epoch_extra_seconds(run["timings"].iloc[1:]) == 0.0  # one epoch, and not epoch 1
    resumed = run["timings"].assign(epoch=[2, 3])  # a resumed run's timings start after epoch 1
    assert scale.first_epoch_extra_seconds(resumed) == 0.0
    faster = run["timings"].assign(train_seconds=[7.0, 8.0])  # epoch 1 faster than the last: nothing extra
    assert scale.first_epoch_extra_seconds(faster) == 0.0
    p = scale.encoder_projection({**run, "timings": faster}, REF)
    assert p["warmup_minutes"] == 0.0
    text = scale.projection_sentence(scale.study_projection({"swin": {**run, "timings": faster}}, REF))
    assert "warm-up)," not in text and "counted once per encoder:" not in text


def test_the_targets_met_and_missed():
    assert scale.TARGET_MINUTES == {"one_gpu": 66.0, "one_gpu_per_encoder": 33.0}
    fast = {e: timed_run(e, 2000.0, 4000.0, setup_s=0.0, first_epoch_s=1.6) for e in ("mambavision", "swin", "vit")}
    proj = scale.study_projection(fast, REF)
    assert proj["one_gpu_minutes"] <= 66 and proj["one_gpu_per_encoder_minutes"] <= 33
    assert "the first is met, the second met." in scale.projection_sentence(proj)
    # 29.3 minutes each: one GPU per encoder meets 33, the three in turn (88) miss 66
    middling = {e: timed_run(e, 400.0, 4000.0, setup_s=0.0, checkpoint_s=0.0, first_epoch_s=8.0)
                for e in ("mambavision", "swin", "vit")}
    proj = scale.study_projection(middling, REF)
    assert proj["one_gpu_per_encoder_minutes"] == pytest.approx(20 * (34720 / 400 + 3923 / 4000) / 60)
    assert "the first is missed, the second met." in scale.projection_sentence(proj)


def profiled_check(commit="edc0123"):
    """A training chapter's step check (eager against graphed), each step profiled (GPU kernel ms per step)."""
    return {"batch_size": 32, "provenance": {"git_commit": commit, "date_utc": "2026-12-01T01:00",
                                             "gpu_name": "NVIDIA H200"}, "variants": [
        {"train_step": "eager", "images_per_s": 280.0, "within_tolerance": True, "profile": {"gpu_busy_ms": 95.0}},
        {"train_step": "graphed", "images_per_s": 400.0, "within_tolerance": True, "profile": {"gpu_busy_ms": 64.0}}]}


def test_the_kernel_bound_comes_from_the_editions_own_profiled_checks():
    runs = {"swin": timed_run("swin", train_ips=400, val_ips=700), "vit": timed_run("vit", 900, 1500)}
    runs["swin"]["step_check"] = profiled_check()
    assert scale.study_projection(runs, REF)["kernel_bound"] is None  # vit's run has no step check
    runs["vit"]["step_check"] = {**profiled_check("fed4567"), "variants": [
        {"train_step": "eager", "images_per_s": 900.0, "within_tolerance": True, "profile": {"gpu_busy_ms": 30.0}},
        {"train_step": "graphed", "images_per_s": 1000.0, "within_tolerance": False,  # other losses: not taken
         "profile": {"gpu_busy_ms": 20.0}}]}
    proj = scale.study_projection(runs, REF)
    bound, per = proj["kernel_bound"], {p["encoder"]: p for p in proj["per_encoder"]}
    swin = bound["per_encoder"]["swin"]
    assert swin["train_step"] == "graphed" and swin["images_per_s"] == pytest.approx(32 / 64.0 * 1e3)
    assert swin["kernel_share_of_step"] == pytest.approx(64.0 / (32 / 400 * 1e3))
    assert swin["fastest_step"] == "graphed" and swin["fastest_speedup_over_eager"] == pytest.approx(400 / 280)
    assert bound["per_encoder"]["vit"]["train_step"] == "eager"
    failed_eager = {**profiled_check(), "variants": [{"train_step": "eager", "images_per_s": None, "error": "OOM"},
                                                     *profiled_check()["variants"][1:]]}
    assert scale.kernel_bound(failed_eager)["fastest_speedup_over_eager"] is None
    train = 20 * 34720 / 500 / 60
    assert swin["minutes"] == pytest.approx(per["swin"]["projected_minutes"] - per["swin"]["train_minutes"] + train)
    assert bound["one_gpu_minutes"] == pytest.approx(swin["minutes"] + bound["per_encoder"]["vit"]["minutes"])
    assert bound["one_gpu_per_encoder_minutes"] == pytest.approx(max(r["minutes"] for r in bound["per_encoder"].values()))
    assert "four_gpu_minutes" not in bound and "four_gpu_minutes" not in proj
    text = scale.kernel_bound_sentence(proj)
    assert text.startswith("The training chapters' profiled step checks (NVIDIA H200, 2026-12-01T01:00 UTC, "
                           "commit edc0123 (swin), fed4567 (vit))")
    assert "64.0 ms (swin, graphed; 80% of its measured step)" in text
    assert f"{bound['one_gpu_minutes']:.1f} minutes on one GPU" in text and "probe" not in text
    results.write_json("/dev/null", proj)


def record(gpus, chain_gpus):
    return {"profile": "speed", "encoders": ["mambavision", "swin", "vit"], "chain_gpus": chain_gpus,
            "provenance": {"gpus": gpus, "gpu_name": gpus[0], "date_utc": "2026-12-01T02:00:00+00:00"}}


def three_encoders():
    return scale.study_projection({"mambavision": timed_run("mambavision", 450, 900),
                                   "swin": timed_run("swin", 380, 700), "vit": timed_run("vit", 1200, 1500)}, REF)


def test_gpus_sentence_for_chains_in_turn_on_one_gpu():
    proj = three_encoders()
    text = scale.gpus_sentence(record(["NVIDIA H200"], None), proj)
    assert text.startswith("The edition was recorded on 2026-12-01 on a machine with one NVIDIA H200; its encoders' "
                           "chains ran in turn on one GPU")
    assert f"the sum of the encoders' projections ({proj['one_gpu_minutes']:.0f} minutes)" in text
    assert f"({proj['one_gpu_per_encoder_minutes']:.0f} minutes, swin): assumed" in text
    assert "not measured with the encoders in parallel" in text


def test_gpus_sentence_for_chains_in_parallel_on_three_gpus_and_on_shared_ones():
    proj = three_encoders()
    text = scale.gpus_sentence(record(["NVIDIA H200"] * 3, ["0", "1", "2"]), proj)
    assert text.startswith("The edition was recorded on 2026-12-01 on a machine with three NVIDIA H200s; its three")
    assert "ran in parallel, one per GPU (GPU 0: mambavision; GPU 1: swin; GPU 2: vit)" in text
    assert "slowest encoder's projection" in text and "as the chains ran here" in text
    assert "added as if they ran one after another" in text and "assumed" not in text
    shared = scale.gpus_sentence(record(["NVIDIA H200"] * 2, ["0", "1", "0"]), proj)
    assert "ran in parallel on two GPUs, sharing (GPU 0: mambavision, vit; GPU 1: swin)" in shared
    assert "upper bounds" in shared


def test_gpus_sentence_without_a_record_names_the_runs_device_and_the_rule():
    proj = three_encoders()
    text = scale.gpus_sentence(None, proj)
    assert text.startswith("This edition is not recorded") and "ran on NVIDIA H200." in text
    assert "sum of the encoders' projections" in text and "slowest encoder's projection" in text
    assert scale.gpus_sentence(None, scale.study_projection({}, REF)).count("no timed run") == 1


def test_a_projection_without_a_run_says_whose_run_it_lacks():
    runs = {"mambavision": timed_run("mambavision", 400.0, 1200.0), "vit": timed_run("vit", 900.0, 2000.0)}
    full = scale.projection_sentence(scale.study_projection(runs, REF))
    assert full.startswith("Projected from the measured epochs, the paper's whole study takes")
    proj = scale.study_projection(runs, REF, absent={"swin": "is partial: 1 of 2 epochs"})
    assert proj["missing"] == {"swin": "is partial: 1 of 2 epochs"} and proj["encoders"] == ["mambavision", "vit"]
    assert scale.projection_sentence(proj).startswith(
        "Without CLIP(Swin) (its run is partial: 1 of 2 epochs), projected from the measured epochs, the paper's "
        "study of the encoders with a finished run takes")


def test_the_projection_file_is_rewritten_only_when_its_values_change(tmp_path):
    """A recorded edition's study_projection.json stays as recorded when the book is built elsewhere and the
    run files read back differ only in a float's last bit; any real change is written."""
    path = tmp_path / "study_projection.json"
    proj = {"one_gpu_minutes": 81.14171990385356, "per_encoder": [{"encoder": "swin", "setup_seconds": 10.992498039999989}],
            "kernel_bound": None}
    assert scale.save_projection(path, proj) and results.read_json(path) == proj
    recorded = path.read_bytes()
    last_bit = {**proj, "per_encoder": [{"encoder": "swin", "setup_seconds": 10.992498039999987}]}
    assert not scale.save_projection(path, last_bit) and path.read_bytes() == recorded
    changed = {**proj, "one_gpu_minutes": 80.0}
    assert scale.save_projection(path, changed) and results.read_json(path)["one_gpu_minutes"] == 80.0
    assert scale.save_projection(path, {**changed, "missing": {"vit": "is partial"}})  # a new key is a change
