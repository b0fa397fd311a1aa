"""The chapters' tables (report.tables) from an edition's runs, the paper's Tables 1 and 2 beside ours, and how
the notebooks show them (report.show: whole integers, index names in the header)."""

import math
import re

import numpy as np
import pandas as pd
import pytest

from mvlip_utils.measure.benchmark_suite import BEST, PAPER
from mvlip_utils.report import plots, show, tables
from mvlip_utils.settings.paper import paper_reference

REF = paper_reference()
METRIC_KEYS = ("accuracy", "precision_weighted", "f1_weighted", "precision_macro", "recall_macro", "f1_macro",
               "top5", "zeroshot_loss")


def run(seed, accuracy, loss=1.0, **extra):
    metrics = {k: accuracy for k in METRIC_KEYS} | {"top5": math.nan, "zeroshot_loss": loss} | extra
    return {"seed": seed, "metrics": metrics}


def bench(alone, loop, cache, alone_spread=0.01, loop_spread=0.02):
    return pd.DataFrame([
        {"kind": "model_only", "setting": PAPER, "mode": "inference", "precision": "fp32", "batch_size": 32,
         "images_per_s": alone, "images_per_s_p10": alone * (1 - alone_spread),
         "images_per_s_p90": alone * (1 + alone_spread)},
        {"kind": "model_only", "setting": BEST, "mode": "inference", "precision": "bf16", "batch_size": 256,
         "images_per_s": alone * 3, "images_per_s_p10": alone * 2.9, "images_per_s_p90": alone * 3.1},
        {"kind": "model_only", "setting": PAPER, "mode": "train", "precision": "fp32", "batch_size": 32,
         "images_per_s": alone / 3, "images_per_s_p10": None, "images_per_s_p90": None},
        {"kind": "eval_loop", "source": "jpeg", "num_workers": 4, "images_per_s": loop,
         "images_per_s_min": loop * (1 - loop_spread), "images_per_s_max": loop * (1 + loop_spread)},
        {"kind": "eval_loop", "source": "uint8_cache", "num_workers": 0, "images_per_s": cache,
         "images_per_s_min": cache * 0.98, "images_per_s_max": cache * 1.02}])


def edition(speeds=None, size="smoke"):
    """Three towers, two seeds each (accuracy 0.5 and 0.6, 0.3 and 0.4, 0.2 alone for vit)."""
    seeds = {"mambavision": [run(0, 0.5, 1.0), run(1, 0.6, 1.2)], "swin": [run(0, 0.3, 2.0), run(1, 0.4, 2.2)],
             "vit": [run(0, 0.2, 3.0)]}
    return {e: {"encoder": e, "runs": runs, "config": {"model_size": size},
                "benchmark": bench(*speeds[e]) if speeds else None} for e, runs in seeds.items()}


def test_mean_sd_over_seeds():
    assert tables.mean_sd([0.5, 0.6]) == f"0.5500 ± {np.std([0.5, 0.6], ddof=1):.4f}"
    assert tables.mean_sd([0.5]) == "0.5000"
    assert tables.mean_sd([math.nan, None]) == "–" and tables.mean_sd([0.5, math.nan]) == "0.5000"


def test_the_papers_table1_is_its_numbers_and_the_authors_last_epoch():
    t1 = tables.paper_table1(REF)
    assert list(t1.columns) == ["MVLIP", "CLIP(Swin)", "CLIP(ViT) as released"] and t1.index.name == "metric"
    assert t1.loc["Accuracy", "MVLIP"] == 0.7466 and t1.loc["F1 (weighted)", "CLIP(Swin)"] == 0.6717
    assert t1.loc["Precision (macro)", "MVLIP"] == 0.7664  # the paper's text
    logs = REF["authors_logs"]
    last_swin = logs[logs.encoder == "swin"].sort_values("epoch").iloc[-1]
    assert t1.loc["F1 (macro)", "CLIP(Swin)"] == pytest.approx(last_swin["f1_macro"])  # from the logs
    assert t1.loc["Validation loss", "MVLIP"] == 1.1713 and t1.loc["Validation loss", "CLIP(Swin)"] == 1.8589
    assert t1.loc["Accuracy", "CLIP(ViT) as released"] == 0.59  # not fine-tuned, fp16
    assert t1.loc["Validation loss", "CLIP(ViT) as released"] == 1.6702
    assert t1.loc["Top-5 accuracy"].isna().all()  # the paper gives none


def test_table1_gives_each_towers_mean_and_sd_over_its_seeds():
    t1 = tables.table1(edition())
    assert list(t1.columns) == ["MVLIP", "CLIP(Swin)", "CLIP(ViT)"] and t1.index.name == "metric"
    assert t1.loc["Accuracy", "MVLIP"] == tables.mean_sd([0.5, 0.6]) == "0.5500 ± 0.0707"
    assert t1.loc["Validation loss", "CLIP(Swin)"] == "2.1000 ± 0.1414"
    assert t1.loc["Accuracy", "CLIP(ViT)"] == "0.2000"  # one seed: no SD
    assert t1.loc["Top-5 accuracy", "MVLIP"] == "–"
    partial = edition()
    del partial["swin"]
    assert "CLIP(Swin)" not in tables.table1(partial).columns
    extra = {**edition(), "convnext_atto": {"runs": [run(0, 0.1)], "config": {}}}
    assert tables.table1(extra).columns[-1] == "CLIP(convnext_atto), beyond the paper"


def test_seed_results_and_the_state_before_training():
    entry = edition()["mambavision"]
    frame = tables.seed_results(entry)
    assert list(frame.index) == ["seed 0", "seed 1", "mean", "SD"]
    assert frame.loc["mean", "accuracy"] == pytest.approx(0.55) and frame.loc["SD", "loss"] == pytest.approx(0.1414, abs=1e-4)
    assert list(frame.columns) == ["accuracy", "top-5", "precision (w.)", "F1 (w.)", "F1 (macro)", "loss"]
    assert list(tables.seed_results(edition()["vit"]).index) == ["seed 0"]  # one seed: no mean and SD rows
    entry["runs"][0]["before_training"] = {
        "fp32": {"accuracy": 0.25, "top5": 1.0, "f1_weighted": 0.1, "zeroshot_loss": 1.38},
        "fp16": {"accuracy": 0.26, "top5": 1.0, "f1_weighted": 0.1, "zeroshot_loss": 1.39}}
    before = tables.before_training(entry)
    assert list(before.index) == ["fp32", "fp16"] and before.loc["fp16", "accuracy"] == 0.26


def test_table2_our_throughput_beside_the_papers_with_percentages_only_for_real_differences():
    speeds = {"mambavision": (300, 120, 150), "swin": (200, 100, 130), "vit": (600, 150, 200)}
    t2 = tables.table2(edition(speeds), REF)
    assert t2.index.name == "model" and list(t2.index) == ["MVLIP", "CLIP(Swin)", "CLIP(ViT)"]
    assert list(t2.columns) == ["paper", "paper: vs CLIP(ViT)", "ours, paper's method", "paper's method: vs CLIP(ViT)",
                                "ours, towers alone", "towers alone: vs CLIP(ViT)"]
    assert t2.loc["MVLIP", "paper"] == "626" and t2.loc["MVLIP", "paper: vs CLIP(ViT)"] == "+33.5%"
    assert t2.loc["CLIP(Swin)", "paper: vs CLIP(ViT)"] == "-5.5%" and t2.loc["CLIP(ViT)", "paper: vs CLIP(ViT)"] == "–"
    assert t2.loc["MVLIP", "ours, paper's method"] == "120" and t2.loc["MVLIP", "ours, towers alone"] == "300"
    assert t2.loc["MVLIP", "paper's method: vs CLIP(ViT)"] == "-20.0%"
    assert t2.loc["MVLIP", "towers alone: vs CLIP(ViT)"] == "-50.0%"
    assert t2.loc["CLIP(ViT)", "towers alone: vs CLIP(ViT)"] == "–"
    # within 3%, or passes that overlap: no percentage
    close = {"mambavision": (590, 148, 180), "swin": (200, 140, 190), "vit": (600, 150, 200)}
    runs = edition(close)
    runs["swin"]["benchmark"] = bench(200, 140, 190, loop_spread=0.1)
    t2 = tables.table2(runs, REF)
    assert t2.loc["MVLIP", "paper's method: vs CLIP(ViT)"] == "no real difference"   # -1.3%
    assert t2.loc["MVLIP", "towers alone: vs CLIP(ViT)"] == "no real difference"     # -1.7%
    assert t2.loc["CLIP(Swin)", "paper's method: vs CLIP(ViT)"] == "no real difference"  # -6.7%, passes overlap
    # CLIP(ViT)'s loop from JPEG at 27% of its loop from the cache times the decoder: no percentage from it
    bound = tables.table2(edition({**speeds, "vit": (600, 150, 550)}), REF)
    assert bound.loc["MVLIP", "paper's method: vs CLIP(ViT)"] == "decoder-bound"
    assert bound.loc["MVLIP", "towers alone: vs CLIP(ViT)"] == "-50.0%"
    # an edition without a run of a tower still lists the paper's row
    missing = edition(speeds)
    del missing["vit"]
    t2 = tables.table2(missing, REF)
    assert t2.loc["CLIP(ViT)", "ours, paper's method"] == "–" and t2.loc["MVLIP", "paper's method: vs CLIP(ViT)"] == "–"


def test_the_towers_alone_and_the_papers_method_per_tower():
    speeds = {"mambavision": (300, 120, 280), "swin": (200, 100, 190), "vit": (600, 150, 550)}
    runs = edition(speeds)
    alone = tables.model_only_table(runs)
    assert alone.index.name == "tower" and alone.index[0] == "tiny MambaVision"
    assert list(alone.setting.unique()) == ["paper's", "bf16, large batch"]  # the paper's conditions first
    assert list(alone.columns) == ["setting", "mode", "batch", "images/s", "p10-p90"]  # no GPU columns on a CPU
    first = alone.iloc[0]
    assert (first["mode"], first["batch"], first["images/s"], first["p10-p90"]) == ("inference", 32, 300, "297-303")
    assert alone[alone["mode"] == "train"]["p10-p90"].eq("–").all()
    loop = tables.eval_loop_table(runs)
    assert list(loop.data[:2]) == ["JPEG decoding", "uint8 cache"] and list(loop.workers[:2]) == [4, 0]
    assert loop["tower alone"].tolist() == [300, 300, 200, 200, 600, 600]
    assert loop["slowest-fastest"].iloc[0] == "118-122"
    assert tables.model_only_table({"vit": {"benchmark": None, "config": {}}}).empty
    assert tables.eval_loop_table({"vit": {"benchmark": None, "config": {}}}).empty


def sweep(encoder_runs):
    rows = []
    for resolution, ms in ((32, 1.0), (64, 4.0), (128, None)):
        rows.append({"kind": "resolution_sweep", "resolution": resolution, "pixels": resolution ** 2,
                     "images_per_s": 1e3 / ms if ms else math.nan, "seconds_per_image": ms / 1e3 if ms else math.nan,
                     "flops_per_image": resolution ** 2 * 1e6 if ms else None, "oom": ms is None,
                     "error": "CUDA out of memory" if ms is None else None})
    return pd.DataFrame(rows)


def test_exponents_and_the_resolutions_a_sweep_could_not_run():
    runs = {"mambavision": {"benchmark": sweep(None), "config": {"model_size": "smoke"}},
            "convnext_atto": {"benchmark": sweep(None).assign(error=lambda f: f.error.where(f.oom.eq(False), "bad size"),
                                                             oom=False), "config": {}}}
    exps = tables.exponent_table(runs)
    assert exps.loc["tiny MambaVision", "b measured"] == pytest.approx(1.0)
    assert exps.loc["tiny MambaVision", "b counted"] == pytest.approx(1.0)
    assert exps.loc["tiny MambaVision", "px"] == "32-64"
    assert exps.loc["tiny MambaVision", "ms per image at largest"] == pytest.approx(4.0)
    failures = tables.sweep_failures(runs)
    assert failures.to_dict(orient="records") == [
        {"tower": "tiny MambaVision", "px": 128, "why": "out of memory"},
        {"tower": "convnext_atto, beyond the paper", "px": 128, "why": "bad size"}]


def test_the_scan_cost_says_a_ratio_only_outside_its_spread():
    frame = pd.DataFrame([
        {"kind": "scan_cost", "mode": "inference", "precision": "fp32", "batch_size": 32, "images_per_s_with_scan": 900.0,
         "images_per_s_without_scan": 1000.0, "ratio": 0.9, "ratio_min": 0.89, "ratio_max": 0.91},
        {"kind": "scan_cost", "mode": "train", "precision": "fp32", "batch_size": 32, "images_per_s_with_scan": 300.0,
         "images_per_s_without_scan": 290.0, "ratio": 1.02, "ratio_min": 0.95, "ratio_max": 1.1}])
    table = tables.scan_cost_table({"mambavision": {"benchmark": frame}})
    assert table.ratio.tolist() == ["0.900", "within its spread"]
    assert table["over rounds"].tolist() == ["0.890-0.910", "0.950-1.100"]
    assert table["with scan"].tolist() == [900.0, 300.0]


def profiled_check(gpu=True):
    """A step check of two profiled steps (GPU figures as step_profile gives them, or a CPU's) and a failed one."""
    variants = []
    for step, ms, fraction in (("fused", 100.0, 0.9), ("compiled", 80.0, 0.98)):
        busy = ms * fraction if gpu else None
        variants.append({"train_step": step, "images_per_s": 32e3 / (ms + 10), "within_tolerance": True,
                         "max_rel_loss_difference": 1e-6, "profile": {
            "steps": 5, "step_ms": ms, "data_wait_ms": 0.5,
            "host_forward_ms": 10.0, "host_backward_ms": 5.0, "host_optimizer_ms": 2.0,
            "gpu_busy_ms": busy, "gpu_forward_ms": busy and busy / 3, "gpu_backward_ms": busy and busy / 2,
            "gpu_optimizer_ms": busy and busy / 6,
            "top_kernels": [{"kernel": f"sm90_gemm_{step}", "calls_per_step": 200.0, "ms_per_step": 40.0,
                             "share_of_kernel_time": 0.5}]}})
    variants.append({"train_step": "graphed", "images_per_s": None, "error": "RuntimeError: x", "profile": None,
                     "max_rel_loss_difference": None, "within_tolerance": None})
    return {"device_name": "NVIDIA H200", "batch_size": 32, "variants": variants}


def test_the_step_check_its_profile_and_its_kernels():
    runs = {"swin": {"step_check": profiled_check(), "config": {"model_size": "paper"}}}
    steps = tables.step_check_table(runs)
    assert steps.step.tolist() == ["fused", "compiled", "graphed"] and steps["same losses"].tolist() == ["yes", "yes", "–"]
    table = tables.step_profile_table(runs)
    assert table.step.tolist() == ["fused", "compiled"] and table.tower.tolist() == ["Swin-B"] * 2  # no profile, no row
    # the step's time from the check (unprofiled), the kernel time from the profile
    assert table["step ms"].tolist() == pytest.approx([110.0, 90.0])
    assert table["kernels ms"].tolist() == pytest.approx([90.0, 78.4])
    assert table["kernel share"].tolist() == pytest.approx([90 / 110, 78.4 / 90])
    assert table["forward ms"].tolist() == pytest.approx([30.0, 78.4 / 3])
    fastest, kernels = tables.top_kernels(runs["swin"]["step_check"])
    assert fastest == "compiled" and kernels.loc["sm90_gemm_compiled", "ms per step"] == 40.0
    fig = plots.step_time_breakdown(table, "t")
    bars = fig.axes[0].patches
    assert len(bars) == 2 * 4 and max(b.get_width() for b in bars) == pytest.approx(100 * 0.9 / 2)
    # the last part of each bar: the rest of the step in the check beside its kernels
    assert [b.get_width() for b in bars[6:]] == pytest.approx([110 - 90, 90 - 78.4])
    # on a CPU: the host's phases and its wait for data
    cpu = tables.step_profile_table({"swin": {"step_check": profiled_check(gpu=False), "config": {}}})
    assert cpu["forward ms"].tolist() == [10.0, 10.0] and cpu["kernel share"].isna().all()
    bars = plots.step_time_breakdown(cpu, "t").axes[0].patches
    assert [b.get_width() for b in bars[6:]] == pytest.approx([0.5, 0.5])
    assert tables.step_profile_table({"swin": {"step_check": None, "config": {}}}).empty
    none, empty = tables.top_kernels({"variants": profiled_check()["variants"][2:]})  # only the failed step
    assert none is None and empty.empty


def test_the_deterministic_record_with_nine_digits_of_each_loss():
    check = {"deterministic": {"default_images_per_s": 100.0, "default_losses": [1.0, 0.5],
                               "images_per_s_repeats": [80.0, 90.0], "losses": [[1.0, 0.5], [1.0, 0.5000000001]]}}
    table = tables.deterministic_table(check)
    assert table.index.tolist() == ["default", "deterministic, repeat 1", "deterministic, repeat 2"]
    assert table["of the default's"].tolist() == [1.0, 0.8, 0.9]
    assert table.loc["deterministic, repeat 2", "loss per epoch"] == "1.000000000, 0.500000000"
    assert tables.deterministic_table({"deterministic": {"error": "x"}}).empty and tables.deterministic_table(None).empty


def per_image_run():
    # 3 classes: class 0 always right, class 1 half mistaken for 2, class 2 always mistaken for 0
    labels = [0, 0, 1, 1, 2, 2]
    predictions = [0, 0, 1, 2, 0, 0]
    return {"per_image": pd.DataFrame({"label": labels, "prediction": predictions,
                                       "correct": [a == b for a, b in zip(labels, predictions)]})}


def test_per_class_results_and_the_most_confused_pairs():
    names = ["red circle", "blue square", "green star", "never seen"]
    classes = tables.per_class(per_image_run(), names)
    assert classes.index.tolist() == names[:3] and classes.index.name == "class"
    assert classes.accuracy.tolist() == [1.0, 0.5, 0.0] and classes.images.tolist() == [2, 2, 2]
    confused = tables.most_confused(per_image_run(), names)
    assert confused.to_dict(orient="records") == [
        {"true class": "green star", "predicted as": "red circle", "images": 2, "of the class": 1.0},
        {"true class": "blue square", "predicted as": "green star", "images": 1, "of the class": 0.5}]


def test_history_and_timings_over_seeds():
    history = lambda loss: pd.DataFrame({"epoch": [1, 2], "train_loss": loss, "val_zeroshot_loss": [2.0, 1.5],  # noqa: E731
                                         "val_loss": [3.0, 2.5], "accuracy": [0.1, 0.2]})
    timings = lambda s: pd.DataFrame({"epoch": [1, 2], "train_seconds": [s, 10.0], "train_images": [320, 320],  # noqa: E731
                                      "validation_seconds": [1.0, 1.5], "checkpoint_seconds": [0.1, 0.2],
                                      "setup_seconds": [30.0, 30.0]})
    entry = {"runs": [{"seed": 0, "history": history([1.0, 0.8]), "timings": timings(50.0)},
                      {"seed": 1, "history": history([1.2, 1.0]), "timings": None}]}
    summary = tables.history_summary(entry)
    assert summary.loc[1, "training loss"] == tables.mean_sd([1.0, 1.2])
    assert summary.loc[2, "validation loss (zero-shot)"] == "1.5000 ± 0.0000"
    times = tables.seed_timings(entry)
    assert times.index.tolist() == ["seed 0"]  # a run without timings has no row
    assert times.loc["seed 0"].to_dict() == {"set-up s": 30.0, "first epoch s": 50.0, "last epoch s": 10.0,
                                             "validation s": 1.5, "checkpoint wait s": 0.2, "images/s": 32.0}


# ------------------------------------------------------------------------------------------- show
def test_cells_show_integers_whole_and_nothing_undefined():
    assert show.cell_text(3, "{:.4f}") == "3" and show.cell_text(np.int64(34745), "{:.4f}") == "34,745"
    assert show.cell_text(2.0, "auto") == "2" and show.cell_text(0.123456, "auto") == "0.1235"
    assert show.cell_text(2.0, "{:.2f}") == "2.00" and show.cell_text(0.5, "{:.0%}") == "50%"
    for missing in (None, math.nan, np.float32("nan"), math.inf, -np.inf):
        assert show.cell_text(missing, "{:.4f}") == "–", missing
    assert show.cell_text(True, "{}") == "yes" and show.cell_text(np.False_, "{:.4f}") == "no"
    assert show.cell_text("0.5 ± 0.1", "{:.4f}") == "0.5 ± 0.1"


def captured_table(monkeypatch, frame, **kwargs):
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    show.show_table(frame, "t-id", "A caption", **kwargs)
    caption, html = shown
    assert caption.data == "**A caption**"
    return html.data


def test_show_table_puts_the_index_names_in_the_header_and_formats_each_column(monkeypatch):
    frame = pd.DataFrame({"claim": ["accuracy", "accuracy"], "edition": ["smoke", "speed"], "n": [1, 34745],
                          "value": [0.123456, math.nan], "ok": [True, False]}).set_index(["claim", "edition"])
    html = captured_table(monkeypatch, frame, formats={"value": "{:.2f}"}, wide=True)
    head = html[html.index("<thead>"):html.index("</thead>")]
    # one header row, the index names in it
    assert re.findall(r"<th>([^<]*)</th>", head) == ["claim", "edition", "n", "value", "ok"]
    assert html.count("<tr") == 3 and 'id="t-id"' in html and "mvlip-wide" in html
    for text in ("<td>34,745</td>", "<td>0.12</td>", "<td>–</td>", "<td>yes</td>", "<td>no</td>"):
        assert text in html, text
    assert "nan" not in html.lower().replace("mvlip", "")
    plain = captured_table(monkeypatch, pd.DataFrame({"a": [1.5]}))
    assert "<th>0</th>" not in plain and "<td>1.5000</td>" in plain and "mvlip-wide" not in plain  # no 0, 1, ... column


def test_figure_captions_name_profile_encoders_and_hardware():
    assert show.figure_caption("Loss.", "smoke", "swin", "CPU") == \
        "Loss. Profile `smoke`, encoder CLIP(Swin), hardware CPU."
    assert show.figure_caption("Loss", "speed", ["mambavision", "vit"], "NVIDIA H200") == \
        "Loss. Profile `speed`, encoder MVLIP, CLIP(ViT), hardware NVIDIA H200."
    assert show.figure_caption("Counts", "smoke", None, "CPU") == "Counts. Profile `smoke`, encoder all, hardware CPU."
