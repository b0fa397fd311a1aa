"""Paper scale: the projection of the paper's study from measured epochs, its floors, the DDP note."""

import pandas as pd
import pytest

from mvlip_utils.train import results
from mvlip_utils.report import scale

REF = results.paper_reference()


def timed_run(encoder, train_ips, val_ips, checkpoint_s=2.0, setup_s=30.0, flops=None, model_only=None):
    timings = pd.DataFrame([
        {"epoch": 1, "train_seconds": 999.0, "train_images": 3200, "validation_seconds": 99.0, "val_images": 1000,
         "checkpoint_seconds": 9.0, "setup_seconds": setup_s},  # warm-up epoch: not used
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
                                                   + 20 * 2.0 / 60 + 30.0 / 60)
    assert scale.encoder_projection({"timings": None, "config": {}}, REF) is None


def test_study_projection_one_gpu_per_encoder_and_the_floors():
    runs = {"mambavision": timed_run("mambavision", 450, 900, flops=(90e9, 30e9), model_only=(500, 1100)),
            "swin": timed_run("swin", 380, 700, flops=(92e9, 31e9), model_only=(400, 900)),
            "vit": timed_run("vit", 1200, 1500, flops=(26e9, 9e9), model_only=(1300, 3300))}
    proj = scale.study_projection(runs, REF)
    per = {p["encoder"]: p for p in proj["per_encoder"]}
    assert proj["one_gpu_minutes"] == pytest.approx(sum(p["projected_minutes"] for p in per.values()))
    assert proj["four_gpu_minutes"] == pytest.approx(per["swin"]["projected_minutes"])  # the slowest encoder
    floor = 20 * (34720 * 92e9 + 3923 * 31e9) / 66.9e12 / 60
    assert per["swin"]["fp32_floor_minutes"] == pytest.approx(floor)
    assert proj["fp32_floor_minutes_one_gpu_per_encoder"] == pytest.approx(floor)
    assert per["vit"]["model_only_minutes"] == pytest.approx(20 * (34720 / 1300 + 3923 / 3300) / 60)
    assert 0 < per["swin"]["utilisation"] < 1
    assert proj["provenance"]["swin"]["git_commit"] == "abc"
    text = scale.projection_sentence(proj)
    assert f"{proj['one_gpu_minutes']:.0f} minutes" in text and "missed" in text or "met" in text
    results.write_json("/dev/null", proj)  # strict JSON: writable as study_projection.json


def test_ddp_note_reads_the_committed_two_gpu_measurement():
    blob = scale.read_ddp_speedup()
    assert blob is not None and blob["rows"], "results/h200-ddp/speedup.json is committed"
    text = scale.ddp_sentence(blob)
    assert "x1.01 (mambavision)" in text and "drop path" in text and "3.5413" in text
    assert scale.ddp_sentence(None).startswith("No multi-GPU")


def test_the_fastest_exact_step_and_the_kernel_bound_of_the_editions_own_profiled_check():
    """Without a check measured apart, the run's own profiled step check gives the kernel bound."""
    run = timed_run("swin", train_ips=300, val_ips=700)
    run["step_check"] = {"batch_size": 32, "provenance": {"git_commit": "edc0123", "date_utc": "2026-11-29T01:00",
                                                          "gpu_name": "NVIDIA H200"}, "variants": [
        {"train_step": "eager", "images_per_s": 280.0, "within_tolerance": True},
        {"train_step": "fused", "images_per_s": 300.0, "within_tolerance": True},
        {"train_step": "compiled", "images_per_s": 360.0, "within_tolerance": True, "profile": {"gpu_busy_ms": 80.0}},
        {"train_step": "graphed", "images_per_s": 400.0, "within_tolerance": False,  # other losses: not taken
         "profile": {"gpu_busy_ms": 60.0}}]}
    best = scale.best_step(run, scale.encoder_projection(run, REF))
    assert best["train_step"] == "compiled" and best["speedup_over_run_step"] == pytest.approx(1.2)
    proj = scale.study_projection({"swin": run}, REF)
    bound = proj["kernel_bound"]["per_encoder"]["swin"]
    assert bound["source"] == "edition" and bound["train_step"] == "compiled"
    assert bound["images_per_s"] == pytest.approx(32 / 80.0 * 1e3)
    assert bound["kernel_share_of_step"] == pytest.approx(80.0 / (32 / 360 * 1e3))
    text = scale.kernel_bound_sentence(proj, "results/speed-probe")
    assert text.startswith("Profiled step checks (the training chapters', for swin:")
    assert "80.0 ms (swin, compiled; 90% of its measured step)" in text and "commit edc0123 (swin)" in text


def probe_check(eager_ips, steps, read_every=50, commit="abc1234"):
    """A profiled step check as the benchmark_suite command writes it: steps (name, images/s, kernel ms)."""
    variants = [{"train_step": "eager", "images_per_s": eager_ips, "within_tolerance": True,
                 "profile": {"gpu_busy_ms": 32e3 / eager_ips * 0.9}}]
    for name, ips, kernel_ms, same in steps:
        variants.append({"train_step": name, "images_per_s": ips, "within_tolerance": same,
                         "profile": {"gpu_busy_ms": kernel_ms}})
    return {"batch_size": 32, "variants": variants, "read_loss_every": read_every, "device_name": "NVIDIA H200",
            "provenance": {"git_commit": commit, "date_utc": "2026-11-29T02:40:00+00:00", "gpu_name": "NVIDIA H200"}}


def test_the_kernel_bound_study_and_what_it_says_of_the_targets(tmp_path):
    checks = {"swin": probe_check(280, [("compiled", 320, 81.0, True), ("graphed", 318, 79.0, True)]),
              "vit": probe_check(800, [("graphed", 860, 24.0, True), ("compiled", 900, 20.0, False)])}
    for encoder, check in checks.items():
        results.write_json(tmp_path / "step-check" / encoder / "step_check.json", check)
    read = scale.read_probe_step_checks(tmp_path)
    assert set(read) == {"swin", "vit"} and read["swin"]["variants"][1]["images_per_s"] == 320
    swin = scale.kernel_bound(read["swin"])
    # the least kernel time among the steps with the eager losses; the fastest in the check beside it
    assert swin["train_step"] == "graphed" and swin["images_per_s"] == pytest.approx(32 / 79.0 * 1e3)
    assert swin["kernel_share_of_step"] == pytest.approx(79.0 / (32 / 318 * 1e3))
    assert swin["fastest_step"] == "compiled" and swin["fastest_speedup_over_eager"] == pytest.approx(320 / 280)
    assert scale.kernel_bound(read["vit"])["train_step"] == "graphed"  # compiled changed the losses: not taken
    runs = {"swin": timed_run("swin", 300, 700), "vit": timed_run("vit", 800, 1500)}
    proj = scale.study_projection(runs, REF, read)
    bound, per = proj["kernel_bound"], {p["encoder"]: p for p in proj["per_encoder"]}
    train = 20 * 34720 / (32 / 79.0 * 1e3) / 60
    assert bound["per_encoder"]["swin"]["minutes"] == pytest.approx(
        per["swin"]["projected_minutes"] - per["swin"]["train_minutes"] + train)
    assert bound["four_gpu_minutes"] == pytest.approx(bound["per_encoder"]["swin"]["minutes"])
    assert bound["one_gpu_minutes"] == pytest.approx(sum(r["minutes"] for r in bound["per_encoder"].values()))
    assert bound["provenance"]["swin"]["git_commit"] == "abc1234"
    text = scale.kernel_bound_sentence(proj, tmp_path)
    assert f"{bound['one_gpu_minutes']:.0f} minutes on one GPU" in text and "commit abc1234 (swin, vit)" in text
    assert "(swin bounds it)" in text
    # without a profiled check for every encoder there is no kernel-bound study
    assert scale.study_projection({**runs, "mambavision": timed_run("mambavision", 400, 900)}, REF, read)["kernel_bound"] is None


def test_the_loss_read_sentence_compares_the_same_check_both_ways(tmp_path):
    assert scale.loss_read_sentence(tmp_path) is None
    results.write_json(tmp_path / "step-check" / "swin" / "step_check.json",
                       probe_check(283.3, [("fused", 267.1, 80, True)]))
    results.write_json(tmp_path / scale.READ_EVERY_STEP / "swin" / "step_check.json",
                       probe_check(281.7, [("fused", 281.3, 80, True)], read_every=1))
    text = scale.loss_read_sentence(tmp_path)
    assert "swin eager 281.7 vs 283.3 images/s (+0.6%)" in text and "every 50 steps" in text
    assert "No consistent difference" in text


def test_a_separate_run_is_set_beside_the_editions_run_its_prediction_and_losses(tmp_path):
    run = timed_run("swin", train_ips=300, val_ips=700)
    run["history"] = pd.DataFrame({"epoch": [1, 2], "train_loss": [3.5, 3.4]})
    run["step_check"] = {"variants": [{"train_step": "fused", "images_per_s": 300.0, "within_tolerance": True},
                                      {"train_step": "compiled", "images_per_s": 330.0, "within_tolerance": True}]}
    proj = scale.study_projection({"swin": run}, REF)
    for name, step, loss in (("swin-compiled", "compiled", 3.4 * (1 + 2e-6)), ("swin-graphed", "graphed", 3.4)):
        folder = tmp_path / name
        results.write_json(folder / "config.json", {"encoder": "swin", "train_step": step})
        pd.DataFrame([{"epoch": 2, "train_seconds": 10.0, "train_images": 3400}]).to_csv(folder / "timings.csv", index=False)
        pd.DataFrame({"epoch": [1, 2], "train_loss": [3.5, loss]}).to_csv(folder / "history.csv", index=False)
    compiled, graphed = scale.probe_sentences(proj, tmp_path, {"swin": run})
    assert "340.0 images/s, against 300.0 for this edition's fused run (+13.3%)" in compiled
    assert "predicted 330.0 (+3.0% measured against predicted)" in compiled  # compiled: the check's fastest
    assert "differ from the edition's by at most 2.0e-06" in compiled
    assert "predicted" not in graphed and "at most 0.0e+00" in graphed
    assert scale.probe_sentences(proj, tmp_path / "none") == []


def test_a_projection_without_a_run_says_whose_run_it_lacks():
    runs = {"mambavision": timed_run("mambavision", 400.0, 1200.0), "vit": timed_run("vit", 900.0, 2000.0)}
    full = scale.projection_sentence(scale.study_projection(runs, REF))
    assert full.startswith("Projected from the measured epochs, the paper's whole study takes")
    proj = scale.study_projection(runs, REF, absent={"swin": "is partial: 1 of 2 epochs"})
    assert proj["missing"] == {"swin": "is partial: 1 of 2 epochs"} and proj["encoders"] == ["mambavision", "vit"]
    assert scale.projection_sentence(proj).startswith(
        "Without CLIP(Swin) (its run is partial: 1 of 2 epochs), projected from the measured epochs, the paper's "
        "study of the encoders with a finished run takes")
