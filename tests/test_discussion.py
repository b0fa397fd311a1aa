"""The discussion's tables for one edition: the paper's Tables 1 and 2 beside ours, and the computed prose."""

import math

import pandas as pd
import pytest

from mvlip_utils.report import discussion
from mvlip_utils.train import results
from mvlip_utils.settings.profiles import ENCODER_LABELS

REF = results.paper_reference()


def runs(mv=0.55, swin=0.50, vit=0.40, loss=(1.0, 2.0, 1.5), speeds=None):
    out = {}
    for encoder, acc, l in zip(("mambavision", "swin", "vit"), (mv, swin, vit), loss):
        metrics = {k: acc for k in ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted",
                                    "precision_macro", "recall_macro", "f1_macro")}
        metrics.update(top5=math.nan, zeroshot_loss=l, n_classes=4, epochs=1, n_val=16)
        frame = None
        if speeds:
            alone, loop, cache = speeds[encoder]
            frame = pd.DataFrame([
                {"kind": "model_only", "setting": "paper's conditions", "mode": "inference", "precision": "fp32",
                 "batch_size": 32, "images_per_s": alone, "images_per_s_p10": alone * 0.99,
                 "images_per_s_p90": alone * 1.01, "device_name": "NVIDIA H200"},
                {"kind": "eval_loop", "source": "jpeg", "num_workers": 4, "images_per_s": loop,
                 "images_per_s_min": loop * 0.98, "images_per_s_max": loop * 1.02},
                {"kind": "eval_loop", "source": "uint8_cache", "num_workers": 0, "images_per_s": cache,
                 "images_per_s_min": cache * 0.98, "images_per_s_max": cache * 1.02}])
        out[encoder] = {"metrics": metrics, "benchmark": frame,
                        "config": {"encoder": encoder, "pretrained": False, "model_size": "smoke", "data": "generated",
                                   "image_size": 64, "resolved_device": "cuda", "device_name": "NVIDIA H200"}}
    return out


def test_table1_puts_paper_and_ours_side_by_side():
    t1 = discussion.table1(runs(), REF)
    paper = t1["paper: MVLIP vs CLIP(Swin) (%)"]
    for metric, claimed in (("Accuracy", 9.83), ("Precision (weighted)", 9.42), ("Recall (weighted)", 9.83),
                            ("F1 (weighted)", 10.02)):
        assert paper[metric] == pytest.approx(claimed, abs=0.006)
    assert paper["Validation loss (zero-shot CE)"] == pytest.approx(-37.0, abs=0.05)  # "37% lower"
    assert t1.loc["Accuracy", "paper CLIP(ViT), pretrained, fp16"] == 0.59  # the authors' not fine-tuned ViT
    assert t1.loc["Validation loss (zero-shot CE)", "paper CLIP(ViT), pretrained, fp16"] == 1.6702
    assert t1.loc["Accuracy", "ours MVLIP"] == 0.55 and t1.loc["Accuracy", "ours CLIP(ViT)"] == 0.40
    assert t1.loc["Accuracy", "ours: MVLIP vs CLIP(Swin) (%)"] == pytest.approx(10.0)
    assert math.isnan(t1.loc["Top-5 accuracy", "paper MVLIP"]) and math.isnan(t1.loc["Top-5 accuracy", "ours MVLIP"])
    text = discussion.table1_sentence(t1, runs(), REF)
    assert "+9.83% (+6.68 points)" in text and "+10.00% (+5.00 points)" in text
    assert "cannot test the paper's Table 1" in text and "random weights" in text


def test_table1_without_swin_has_no_relative_difference():
    partial = runs()
    del partial["swin"]
    t1 = discussion.table1(partial, REF)
    assert "ours CLIP(Swin)" not in t1.columns and t1["ours: MVLIP vs CLIP(Swin) (%)"].isna().all()
    assert "lacks a MVLIP or CLIP(Swin) run" in discussion.table1_sentence(t1, partial, REF)


def test_table2_relative_to_vit_both_ways():
    speeds = {"mambavision": (300, 120, 280), "swin": (200, 100, 190), "vit": (600, 150, 550)}
    t2 = discussion.table2(runs(speeds=speeds), REF)
    mv, vit = ENCODER_LABELS["mambavision"], ENCODER_LABELS["vit"]
    assert t2.loc[mv, "paper (images/s)"] == 626.35
    assert t2.loc[mv, "paper: vs CLIP(ViT) (%)"] == pytest.approx(33.49, abs=0.01)
    assert t2.loc[mv, "ours, paper's method (images/s)"] == 120
    assert t2.loc[mv, "ours, paper's method: vs CLIP(ViT) (%)"] == pytest.approx(-20.0)
    assert t2.loc[mv, "ours, model only: vs CLIP(ViT) (%)"] == pytest.approx(-50.0)
    assert math.isnan(t2.loc[vit, "ours, model only: vs CLIP(ViT) (%)"])
    assert len(t2.columns) == 6  # narrow enough for the page


def test_eval_loop_sentence_says_whether_the_loop_hides_the_towers_differences():
    hidden = runs(speeds={"mambavision": (1000, 620, 950), "swin": (900, 610, 850), "vit": (3000, 630, 2800)})
    text = discussion.eval_loop_sentence(hidden)
    assert "measures the input pipeline as much as the models" in text and "1.03x" in text and "3.33x" in text
    follows = runs(speeds={"mambavision": (1000, 900, 950), "swin": (900, 850, 850), "vit": (3000, 2800, 2800)})
    assert "follows the models" in discussion.eval_loop_sentence(follows)
    table = discussion.eval_loop_table(hidden)
    assert table["loop / model only"].round(2).tolist() == [0.62, 0.95, 0.68, 0.94, 0.21, 0.93]


def test_single_run_records_serve_the_edition_builders():
    records = [{"kind": "scan_cost", "mode": "inference", "precision": "fp32", "batch_size": 32,
                "images_per_s_with_scan": 900.0, "images_per_s_without_scan": 1000.0, "ratio": 0.9,
                "ratio_min": 0.89, "ratio_max": 0.91}]
    one = discussion.single_run("mambavision", records)
    assert discussion.scan_cost_table(one)["ratio"].tolist() == [0.9]
    assert "the scan costs 10.0% to 10.0%" in discussion.scan_cost_sentence(one)
    assert discussion.find(records, kind="scan_cost", mode="inference") is records[0]
    assert discussion.find(records, kind="flops") is None


def profiled_check(busy=(0.9, 0.98)):
    """A step check of two profiled steps (GPU figures as step_profile gives them) and a failed one."""
    variants = []
    for step, ms, fraction in (("fused", 100.0, busy[0]), ("compiled", 80.0, busy[1])):
        variants.append({"train_step": step, "images_per_s": 32e3 / (ms + 10), "within_tolerance": True, "profile": {
            "steps": 5, "step_ms": ms, "images_per_s": 32e3 / ms, "data_wait_ms": 0.5,
            "host_forward_ms": 10.0, "host_backward_ms": 5.0, "host_optimizer_ms": 2.0, "host_loss_read_ms": 0.0,
            "gpu_busy_ms": ms * fraction, "gpu_idle_ms": ms * (1 - fraction), "gpu_busy_fraction": fraction,
            "gpu_forward_ms": ms * fraction / 3, "gpu_backward_ms": ms * fraction / 2,
            "gpu_optimizer_ms": ms * fraction / 6, "gpu_loss_read_ms": 0.0, "gpu_other_ms": 0.0,
            "kernels_per_step": 1000.0,
            "top_kernels": [{"kernel": f"sm90_gemm_{step}", "calls_per_step": 200.0, "ms_per_step": 40.0,
                             "share_of_kernel_time": 0.5}]}})
    variants.append({"train_step": "graphed", "images_per_s": None, "error": "RuntimeError: x",
                     "profile": None})
    return {"device_name": "NVIDIA H200", "batch_size": 32, "variants": variants}


def test_the_step_profile_table_sentence_and_kernels_of_a_check():
    from mvlip_utils.report import plots

    runs_ = {"swin": {"step_check": profiled_check()}}
    table = discussion.step_profile_table(runs_)
    assert list(table.step) == ["fused", "compiled"]  # the failed step has no profile
    # the step's time from the check (unprofiled), the kernel time from the profile
    assert table["step ms"].tolist() == pytest.approx([110.0, 90.0])
    assert table["GPU kernels ms"].tolist() == pytest.approx([90.0, 78.4])
    assert table["kernels / step"].tolist() == pytest.approx([90 / 110, 78.4 / 90])
    text = discussion.step_profile_sentence(runs_)
    assert "(compiled, 90.0 ms in the check) spends 78.4 ms in GPU kernels (87% of it" in text
    assert "optimizer 13.1 ms" in text
    fastest, kernels = discussion.top_kernels(runs_["swin"]["step_check"])
    assert fastest == "compiled" and kernels.loc["sm90_gemm_compiled", "ms per step"] == 40.0
    fig = plots.step_time_breakdown(table, "t")
    bars = fig.axes[0].patches
    assert len(bars) == 2 * 5 and max(b.get_width() for b in bars) == pytest.approx(100 * 0.9 / 2)
    # the last part of each bar: the rest of the step in the check beside its kernels
    assert [b.get_width() for b in bars[8:]] == pytest.approx([110 - 90, 90 - 78.4])
    assert discussion.step_profile_sentence({"swin": {"step_check": None}}) == \
        "No training step was profiled in this edition."


def test_sentences_name_a_missing_failed_or_partial_run():
    partial = runs()
    del partial["swin"]
    absent = {"swin": "is partial: 1 of 2 epochs"}
    t1 = discussion.table1(partial, REF)
    assert discussion.table1_sentence(t1, partial, REF, absent).endswith(
        "lacks a MVLIP or CLIP(Swin) run to compare: the CLIP(Swin) run of this edition is partial: 1 of 2 epochs.")
    text = discussion.table2_sentence(partial, REF, {"swin": "failed: it stopped before its first epoch ended"})
    assert "here **no verdict**; the CLIP(Swin) run of this edition failed: it stopped before its first epoch ended" in text


def test_table1_gives_the_chance_reason_instead_of_a_ratio_of_noise():
    chance = runs(mv=0.0003, swin=0.001, vit=0.001, loss=(6.9151, 6.909, 6.909))
    for run in chance.values():
        run["metrics"].update(n_classes=1000, n_val=3000)
    t1 = discussion.table1(chance, REF)
    ours = t1["ours: MVLIP vs CLIP(Swin) (%)"]
    assert ours["Accuracy"] == "both at chance (1/1000, at most 0.0022 over 3000 images)"
    assert ours["Validation loss (zero-shot CE)"].startswith("both at chance (a uniform guess's ln 1000")
    assert all(isinstance(v, str) for k, v in ours.items() if k != "Top-5 accuracy")
    text = discussion.table1_sentence(t1, chance, REF)
    assert "are both at chance (1/1000, at most 0.0022 over 3000 images) (0.0003 vs 0.0010)" in text
    assert "noise, not a finding" in text
