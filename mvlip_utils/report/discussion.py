"""The discussion's tables for one edition of the study (one profile's runs): the paper's Table 1 and Table 2
beside ours, and the throughput, resolution, scan, training-step and paper-scale tables, each built from the
run folders (``results.load_all_runs``). The verdicts on the paper's claims are ``findings``'.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd

from ..measure.records import BEST, COMPILED, PAPER, PAPER_FUSED, STRICT, benchmark_rate, benchmark_record
from .findings import eval_loop_record, ran_on_gpu, relative_change, speed_record
from ..settings.encoders import marked
from ..settings.profiles import ENCODER_LABELS, ENCODERS, TOWER_NAMES


def model_label(encoder: str) -> str:
    """The model's name in the discussion's tables and figures: an extra encoder's is marked "beyond the paper"."""
    return marked(ENCODER_LABELS[encoder], encoder)


def tower_label(encoder: str) -> str:
    """The image tower's name in the discussion's tables: an extra encoder's is marked "beyond the paper"."""
    return marked(TOWER_NAMES[encoder], encoder)

TABLE1_METRICS = {"accuracy": "Accuracy", "precision_weighted": "Precision (weighted)",
                  "recall_weighted": "Recall (weighted)", "f1_weighted": "F1 (weighted)",
                  "precision_macro": "Precision (macro)", "recall_macro": "Recall (macro)",
                  "f1_macro": "F1 (macro)", "top5": "Top-5 accuracy",
                  "zeroshot_loss": "Validation loss (zero-shot CE)"}
VIT_PRETRAINED = "vit_pretrained_not_finetuned_fp16"


def paper_final_metrics(ref: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The paper's final-epoch numbers: Table 1 for MVLIP and CLIP(Swin), completed (macro averages,
    zero-shot loss) from the last epoch of the authors' logs, and the authors' pretrained, not fine-tuned
    CLIP(ViT) evaluated in fp16."""
    logs = ref["authors_logs"]
    out: dict[str, dict[str, float]] = {}
    for encoder in ("mambavision", "swin"):
        last = logs[logs.encoder == encoder].sort_values("epoch").iloc[-1]
        row = {k: float(last[k]) for k in TABLE1_METRICS if k in last.index}
        row["zeroshot_loss"] = float(last["val_zeroshot_loss"])
        row.update({k: float(v) for k, v in ref["table1_final_epoch"][encoder].items()})
        out[encoder] = row
    vit = dict(ref["table1_final_epoch"][VIT_PRETRAINED])
    vit["zeroshot_loss"] = vit.pop("val_zeroshot_loss")
    out[VIT_PRETRAINED] = {k: float(v) for k, v in vit.items()}
    return out


def table1(runs: Mapping[str, Mapping[str, Any]], ref: Mapping[str, Any]) -> pd.DataFrame:
    """Table 1: the paper's final-epoch metrics (with the authors' pretrained CLIP(ViT), not fine-tuned, fp16)
    beside ours (each run's metrics.json, as ``results.load_metrics`` reads it: null is NaN), and MVLIP
    against CLIP(Swin) in percent for both."""
    paper = paper_final_metrics(ref)
    frame = pd.DataFrame(index=list(TABLE1_METRICS.values()))
    for encoder in ("mambavision", "swin"):
        frame[f"paper {ENCODER_LABELS[encoder]}"] = [paper[encoder].get(k, math.nan) for k in TABLE1_METRICS]
    frame["paper CLIP(ViT), pretrained, fp16"] = [paper[VIT_PRETRAINED].get(k, math.nan) for k in TABLE1_METRICS]
    frame["paper: MVLIP vs CLIP(Swin) (%)"] = [
        relative_change(paper["mambavision"].get(k), paper["swin"].get(k)) for k in TABLE1_METRICS]
    for encoder, run in runs.items():
        frame[f"ours {model_label(encoder)}"] = [float(run["metrics"].get(k, math.nan))
                                                                 for k in TABLE1_METRICS]
    ours = {e: runs[e]["metrics"] for e in ("mambavision", "swin") if e in runs}
    frame["ours: MVLIP vs CLIP(Swin) (%)"] = [_ours_change(ours, k) for k in TABLE1_METRICS]
    frame.index.name = "metric"
    return frame


def _ours_change(ours: Mapping[str, Mapping[str, Any]], key: str) -> float | str:
    """MVLIP against CLIP(Swin) in percent for metric ``key``; where both are at chance level
    (``findings.chance_reason``) that reason instead, not a ratio of noise; NaN without both runs."""
    from .findings import chance_reason

    if len(ours) < 2:
        return math.nan
    a, b = ours["mambavision"].get(key), ours["swin"].get(key)
    meta = ours["mambavision"]
    return chance_reason(key, a, b, meta.get("n_classes"), meta.get("n_val")) or relative_change(a, b)


def table2(runs: Mapping[str, Mapping[str, Any]], ref: Mapping[str, Any]) -> pd.DataFrame:
    """Table 2: the paper's throughput beside ours, the model alone at the paper's conditions and the
    paper's method (the whole evaluation loop, JPEG decoding), each also relative to CLIP(ViT) in percent."""
    paper = ref["table2_throughput_images_per_s"]
    encoders = [e for e in ENCODERS if e in paper or e in runs] + [e for e in runs if e not in ENCODERS]

    alone = {e: benchmark_rate(runs.get(e, {}), kind="model_only", setting=PAPER, mode="inference")
             for e in encoders}
    loop = {e: benchmark_rate(runs.get(e, {}), kind="eval_loop", source="jpeg") for e in encoders}
    frame = pd.DataFrame(index=[model_label(e) for e in encoders])
    for label, values in (("paper", {e: paper.get(e, math.nan) for e in encoders}),
                          ("ours, model only", alone), ("ours, paper's method", loop)):
        frame[f"{label} (images/s)"] = [values[e] for e in encoders]
        frame[f"{label}: vs CLIP(ViT) (%)"] = [relative_change(values[e], values.get("vit")) if e != "vit"
                                               else math.nan for e in encoders]
    frame.index.name = "model"
    return frame


def benchmark_frame(runs: Mapping[str, Mapping[str, Any]], kind: str) -> pd.DataFrame:
    """The benchmark records of one ``kind`` of every run, with an ``encoder`` column."""
    frames = [run["benchmark"][run["benchmark"]["kind"] == kind].assign(encoder=encoder)
              for encoder, run in runs.items() if run.get("benchmark") is not None and "kind" in run["benchmark"]]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def model_only_table(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Model-only throughput: one row per tower and setting (median images/s with the 10th-90th percentile
    range, peak memory, fraction of the GPU's peak)."""
    frame = benchmark_frame(runs, "model_only")
    if frame.empty:
        return frame
    out = pd.DataFrame({
        "tower": frame.encoder.map(tower_label), "setting": frame.setting, "mode": frame["mode"],
        "precision": frame.precision, "batch": frame.batch_size, "images/s": frame.images_per_s,
        "p10-p90": [f"{lo:.0f}-{hi:.0f}" if pd.notna(lo) and pd.notna(hi) else "–"
                    for lo, hi in zip(frame.get("images_per_s_p10", pd.Series(math.nan, index=frame.index)),
                                      frame.get("images_per_s_p90", pd.Series(math.nan, index=frame.index)))],
        "peak GiB": frame.get("peak_memory_bytes", pd.Series(math.nan, index=frame.index)) / 2**30,
        "of peak FLOP/s": frame.get("utilisation", pd.Series(math.nan, index=frame.index)),
    })
    return out.sort_values(["setting", "mode", "tower"], kind="stable").reset_index(drop=True)


def eval_loop_table(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The paper's method (whole evaluation loop) against the model alone at the paper's inference
    conditions, per tower and data source."""
    frame = benchmark_frame(runs, "eval_loop")
    if frame.empty:
        return frame
    alone = {e: (speed_record(run) or {}).get("images_per_s") for e, run in runs.items()}
    out = pd.DataFrame({
        "tower": frame.encoder.map(tower_label),
        "data": frame.source.map({"jpeg": "JPEG decoding", "uint8_cache": "uint8 cache"}),
        "workers": frame.num_workers, "images/s": frame.images_per_s,
        "slowest-fastest pass": [f"{lo:.0f}-{hi:.0f}" for lo, hi in zip(frame.images_per_s_min, frame.images_per_s_max)],
        "model only images/s": frame.encoder.map(alone)})
    out["loop / model only"] = out["images/s"] / out["model only images/s"]
    return out


def scan_cost_table(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """MambaVision with its selective scan against the scan replaced by its skip term."""
    frame = benchmark_frame(runs, "scan_cost")
    if frame.empty:
        return frame
    return pd.DataFrame({"mode": frame["mode"], "precision": frame.precision, "batch": frame.batch_size,
                         "with scan (images/s)": frame.images_per_s_with_scan,
                         "scan removed (images/s)": frame.images_per_s_without_scan,
                         "ratio": frame.ratio, "ratio range over rounds": [
                             f"{lo:.3f}-{hi:.3f}" for lo, hi in zip(frame.ratio_min, frame.ratio_max)]})


def step_check_table(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The faster training steps against the eager one (02_train's check): per tower and step, the training
    images/s of the second epoch and the largest relative difference of the per-epoch losses."""
    rows = []
    for encoder, run in runs.items():
        check = run.get("step_check")
        if not check:
            continue
        for variant in check["variants"]:
            rows.append({"tower": tower_label(encoder), "step": variant["train_step"],
                         "images/s": variant.get("images_per_s"),
                         "speed-up": variant.get("speedup"),
                         "largest loss difference (rel.)": variant.get("max_rel_loss_difference"),
                         "within tolerance": variant.get("within_tolerance")})
    return pd.DataFrame(rows)


PROFILE_PHASES = ("forward", "backward", "optimizer")


def step_profile_table(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Where a training step's time goes (the step check's profiled steps, ``step_profile``): per tower and
    step, the step's milliseconds in the check (unprofiled: its second epoch) and under the profiler (whose
    own host work lengthens host-bound steps), the GPU's kernel time by the phase that launched the kernels
    (the profiler times kernels on the GPU, so these hold unprofiled too) and its share of the unprofiled
    step, the GPU's idle time while profiled, the host's wait for data and the kernels per step (GPU columns
    empty on a CPU)."""
    rows = []
    for encoder, run in runs.items():
        check = run.get("step_check") or {}
        for variant in check.get("variants", []):
            profile = variant.get("profile")
            if not profile or profile.get("error"):
                continue
            unprofiled = check["batch_size"] / variant["images_per_s"] * 1e3 if variant.get("images_per_s") else math.nan
            busy = profile["gpu_busy_ms"]
            rows.append({"tower": tower_label(encoder), "step": variant["train_step"],
                         "same losses": variant.get("within_tolerance"),
                         "step ms": unprofiled, "step ms profiled": profile["step_ms"],
                         "GPU kernels ms": busy, "kernels / step": busy / unprofiled if busy is not None else None,
                         **{f"GPU {phase} ms": profile[f"gpu_{phase}_ms"] for phase in PROFILE_PHASES},
                         "GPU other ms": profile["gpu_other_ms"], "GPU idle ms profiled": profile["gpu_idle_ms"],
                         "data wait ms": profile["data_wait_ms"],
                         **{f"host {phase} ms": profile[f"host_{phase}_ms"] for phase in PROFILE_PHASES},
                         "kernels per step": profile["kernels_per_step"], "profiled steps": profile["steps"]})
    return pd.DataFrame(rows)


STEP_PROFILE_FORMATS = {"step ms": "{:.1f}", "step ms profiled": "{:.1f}", "kernels / step": "{:.0%}",
                        "kernels per step": "{:.0f}", "profiled steps": "{:d}", "tower": "{}", "step": "{}",
                        "same losses": "{}"}


def top_kernels(check: Mapping[str, Any]) -> tuple[str | None, pd.DataFrame]:
    """The fastest profiled step of one run's check with the eager losses (its images/s in the check; any
    profiled step where none kept them), the step ``step_profile_sentence`` speaks of, and the kernels that
    took the most GPU time in it."""
    profiled = [v for v in check.get("variants", []) if v.get("profile") and not v["profile"].get("error")
                and v.get("images_per_s")]
    if not profiled:
        return None, pd.DataFrame()
    exact = [v for v in profiled if v.get("within_tolerance")]
    fastest = max(exact or profiled, key=lambda v: v["images_per_s"])
    frame = pd.DataFrame(fastest["profile"].get("top_kernels", []))
    if not frame.empty:
        frame = frame.rename(columns=lambda c: c.replace("_", " ")).set_index("kernel")
    return fastest["train_step"], frame


PROJECTION_STAGES = ["training", "validation", "checkpoint waits", "first-epoch warm-up", "set-up"]


def projection_table(projection: Mapping[str, Any]) -> pd.DataFrame:
    """Minutes of the paper's study per encoder: measured projection by stage (``PROJECTION_STAGES``) and
    the two floors."""
    rows = []
    for p in projection["per_encoder"]:
        rows.append({"tower": tower_label(p["encoder"]), "training": p["train_minutes"],
                     "validation": p["validation_minutes"], "checkpoint waits": p["checkpoint_minutes"],
                     "first-epoch warm-up": p.get("warmup_minutes", 0.0), "set-up": p["setup_minutes"],
                     "projected total": p["projected_minutes"],
                     "model-only floor": p.get("model_only_minutes", math.nan),
                     "FLOP floor (fp32 peak)": p.get("fp32_floor_minutes", math.nan)})
    return pd.DataFrame(rows).set_index("tower") if rows else pd.DataFrame()


# ----------------------------------------------------------------------- one run's records, as a run
def single_run(encoder: str, records: list[dict]) -> dict[str, dict[str, Any]]:
    """Records measured in a notebook (before benchmark.json is written) in the shape ``load_all_runs``
    gives, so that the edition's table and sentence builders serve one tower too."""
    return {encoder: {"benchmark": pd.DataFrame(records), "config": {"encoder": encoder}}}


def find(records: list[dict], **match: Any) -> dict | None:
    """The first record whose fields equal ``match``."""
    return next((r for r in records if all(r.get(k) == v for k, v in match.items())), None)


def is_gpu_edition(runs: Mapping[str, Mapping[str, Any]]) -> bool:
    return any(ran_on_gpu(run) for run in runs.values())


MODEL_ONLY_FORMATS = {"batch": "{:.0f}", "images/s": "{:.1f}", "p10-p90": "{}", "peak GiB": "{:.2f}",
                      "of peak FLOP/s": "{:.1%}", "mode": "{}", "setting": "{}", "precision": "{}", "tower": "{}"}
EVAL_LOOP_FORMATS = {"workers": "{:.0f}", "images/s": "{:.1f}", "slowest-fastest pass": "{}",
                     "model only images/s": "{:.1f}", "loop / model only": "{:.2f}"}
SCAN_FORMATS = {"batch": "{:.0f}", "with scan (images/s)": "{:.1f}", "scan removed (images/s)": "{:.1f}",
                "ratio": "{:.3f}", "ratio range over rounds": "{}"}


# ------------------------------------------------------------------------------ computed sentences
def _pct(value: float) -> str:
    return f"{value:+.1f}%" if math.isfinite(value) else "–"


def table1_sentence(t1: pd.DataFrame, runs: Mapping[str, Mapping[str, Any]], ref: Mapping[str, Any],
                    absent: Mapping[str, str] | None = None) -> str:
    """What Table 1 shows, paper and ours, with absolute points beside the percentages, and whether these
    runs can test it (``findings.accuracy_evidence_gaps``); ``absent``: {encoder: how its run is not
    finished} (``results.unfinished_runs``)."""
    from .findings import absent_run_reasons, accuracy_evidence_gaps

    paper_pct = t1.loc["Accuracy", "paper: MVLIP vs CLIP(Swin) (%)"]
    points = (t1.loc["Accuracy", "paper MVLIP"] - t1.loc["Accuracy", "paper CLIP(Swin)"]) * 100
    text = f"The paper reports MVLIP {paper_pct:+.2f}% ({points:+.2f} points) above CLIP(Swin) in accuracy. "
    if {"mambavision", "swin"} <= set(runs):
        ours = t1.loc["Accuracy", "ours: MVLIP vs CLIP(Swin) (%)"]
        a, b = t1.loc["Accuracy", "ours MVLIP"], t1.loc["Accuracy", "ours CLIP(Swin)"]
        text += (f"In these runs MVLIP and CLIP(Swin) are {ours} ({a:.4f} vs {b:.4f}): their relative difference is "
                 "noise, not a finding. " if isinstance(ours, str) else
                 f"In these runs MVLIP is {ours:+.2f}% ({(a - b) * 100:+.2f} points) relative to CLIP(Swin) ({a:.4f} vs {b:.4f}). ")
        gaps = accuracy_evidence_gaps(runs["mambavision"], ref)
        text += ("These runs meet the paper's conditions, so they test its Table 1." if not gaps else
                 "They cannot test the paper's Table 1: " + "; ".join(gaps) + ".")
    else:
        text += ("This edition lacks a MVLIP or CLIP(Swin) run to compare: "
                 + "; ".join(absent_run_reasons(("mambavision", "swin"), runs, absent)) + ".")
    return text


def table2_sentence(runs: Mapping[str, Mapping[str, Any]], ref: Mapping[str, Any],
                    absent: Mapping[str, str] | None = None) -> str:
    """The throughput claims judged on this edition (``findings.judge``: the same rule as the findings)."""
    from .findings import judge, paper_claims

    parts = []
    for claim in (c for c in paper_claims(ref) if c["kind"] == "throughput"):
        result = judge(claim, runs, ref, absent)
        parts.append(f"*{claim['claim']}* (paper {claim['paper']}): here **{result['verdict']}**"
                     + (f", {result['ours']}" if result["ours"] != "–" else "") + f"; {result['reason']}.")
    return " ".join(parts)


def eval_loop_sentence(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """How the paper's method (whole loop) compares with the towers alone, and whether it hides their
    differences (computed: the spread of the loop rates across towers against that of the towers alone)."""
    loop, alone = {}, {}
    for encoder, run in runs.items():
        a, b = eval_loop_record(run, "jpeg"), speed_record(run)
        if a and b and b.get("images_per_s"):
            loop[encoder], alone[encoder] = a, b
    if not loop:
        return "No measurement of the paper's method in this edition."
    shares = {e: loop[e]["images_per_s"] / alone[e]["images_per_s"] for e in loop}
    cache = {e: eval_loop_record(runs[e], "uint8_cache") for e in loop}
    cache_shares = {e: r["images_per_s"] / alone[e]["images_per_s"] for e, r in cache.items() if r}
    workers = int(next(iter(loop.values()))["num_workers"])
    text = (f"With JPEG decoding in {workers} workers the whole loop runs at "
            + ", ".join(f"{shares[e]:.2f}x ({TOWER_NAMES[e]})" for e in shares) + " of the tower's own speed")
    text += ("; from the uint8 cache at " + ", ".join(f"{cache_shares[e]:.2f}x" for e in cache_shares) + "." if cache_shares
             else ".")
    if len(loop) >= 2:
        rates = [r["images_per_s"] for r in loop.values()]
        models = [r["images_per_s"] for r in alone.values()]
        loop_spread, model_spread = max(rates) / min(rates), max(models) / min(models)
        if math.log(loop_spread) < 0.5 * math.log(model_spread):  # the loop keeps under half of the gap
            text += (f" Across towers the loop's rates differ by {loop_spread:.2f}x where the towers alone differ by "
                     f"{model_spread:.2f}x: with JPEG decoding, the paper's method measures the input pipeline as much "
                     "as the models.")
        else:
            text += (f" Across towers the loop's rates differ by {loop_spread:.2f}x, as much as the towers alone "
                     f"({model_spread:.2f}x): here the paper's method follows the models.")
    return text


def model_only_sentence(run: Mapping[str, Any], tower: str) -> str:
    """What the model-only settings of one tower show: fused AdamW, strict fp32, the best settings, compile."""
    def rate(**match) -> float:
        return benchmark_rate(run, kind="model_only", **match)

    paper_inf, paper_train = rate(setting=PAPER, mode="inference"), rate(setting=PAPER, mode="train")
    fused = rate(setting=PAPER_FUSED, mode="train")
    strict_inf, strict_train = rate(setting=STRICT, mode="inference"), rate(setting=STRICT, mode="train")
    best_inf, best_train = rate(setting=BEST, mode="inference"), rate(setting=BEST, mode="train")
    compiled = benchmark_record(run, kind="model_only", setting=COMPILED)
    parts = [f"At the paper's conditions {tower} infers {paper_inf:.1f} images/s and trains {paper_train:.1f}; fused AdamW "
             f"changes the training step by {_pct(relative_change(fused, paper_train))}."]
    if math.isfinite(strict_inf):
        parts.append(f"Strict fp32 (TF32 off for convolutions too) changes inference by "
                     f"{_pct(relative_change(strict_inf, paper_inf))} and training by {_pct(relative_change(strict_train, paper_train))} "
                     "against PyTorch's default, the paper's 'FP32'.")
    if math.isfinite(best_inf):
        parts.append(f"The best settings reach {best_inf / paper_inf:.1f}x the paper's inference rate and "
                     f"{best_train / paper_train:.1f}x its training rate.")
    if compiled:
        parts.append(f"torch.compile gives {compiled['images_per_s'] / best_inf:.2f}x the best inference rate "
                     f"(compiled in {compiled.get('first_call_s') or 0:.0f} s)." if compiled.get("images_per_s")
                     else f"torch.compile: {compiled.get('error')}.")
    return " ".join(parts)


def sweep_sentence(runs: Mapping[str, Mapping[str, Any]], model_size: str) -> str:
    """The fitted growth exponents of the towers' resolution sweeps, classified as linear or quadratic."""
    from .findings import LINEAR_MAX, QUADRATIC_MIN, growth_exponents

    exps = growth_exponents(runs)
    if exps.empty:
        return "Too few resolutions ran to fit an exponent."

    def kind(b: float) -> str:
        if b < 0.8:
            return "below linear: fixed costs per call, or a device not yet full, dominate at the small sizes"
        return ("about linear" if b <= LINEAR_MAX else "about quadratic" if b >= QUADRATIC_MIN
                else "between linear and quadratic")

    parts = [f"{TOWER_NAMES[r.encoder]}: time per image grows with exponent b = {r._2:.2f} ({kind(r._2)}) up to "
             f"{r._4} px" + (f", memory per image with b = {r._3:.2f}" if math.isfinite(r._3) else "")
             for r in exps.itertuples()]
    frame = benchmark_frame(runs, "resolution_sweep")
    failed = frame[frame["images_per_s"].isna()] if len(frame) else frame
    text = "; ".join(parts) + "."
    if len(failed):
        text += " Failed: " + ", ".join(f"{r.resolution} px ({'out of memory' if r.oom else r.error})"
                                        for r in failed.itertuples()) + "."
    if model_size == "smoke":
        text += " At the tiny smoke sizes fixed per-call costs weigh heavily, so these exponents say little about the paper's towers."
    return text


def scan_cost_sentence(runs: Mapping[str, Mapping[str, Any]]) -> str:
    table = scan_cost_table(runs)
    if table.empty:
        return "No measurement of the selective scan's cost."
    return ("With its selective scan the tower keeps " + ", ".join(
        f"{r.ratio:.1%} ({r.mode}, {r.precision}, batch {int(r.batch)})" for r in table.itertuples())
        + " of the throughput it has with the scan replaced by its skip term: the scan costs "
        f"{1 - table.ratio.max():.1%} to {1 - table.ratio.min():.1%}.")


def step_profile_sentence(runs: Mapping[str, Mapping[str, Any]]) -> str:
    """What the profiled steps say bounds the training step: per tower, the step that trained fastest in
    the check with the eager losses, its time, and how much of it its kernels take (by phase) on a GPU, or
    the host's phases and its wait for data on a CPU."""
    table = step_profile_table(runs)
    if table.empty:
        return "No training step was profiled in this edition."
    parts = []
    for tower, rows in table.groupby("tower", sort=False):
        exact = rows[rows["same losses"].astype(bool) & rows["step ms"].notna()]
        best = (exact if len(exact) else rows).sort_values("step ms").iloc[0]
        if pd.isna(best["GPU kernels ms"]):
            parts.append(f"{tower}'s fastest step in the check ({best.step}, {best['step ms']:.1f} ms) spends, "
                         f"profiled on the host, {best['host forward ms']:.1f} ms in forward, "
                         f"{best['host backward ms']:.1f} in backward, {best['host optimizer ms']:.1f} in the "
                         f"optimizer and {best['data wait ms']:.1f} waiting for data")
            continue
        parts.append(
            f"{tower}'s fastest step with the eager losses ({best.step}, {best['step ms']:.1f} ms in the check) "
            f"spends {best['GPU kernels ms']:.1f} ms in GPU kernels ({best['kernels / step']:.0%} of it: forward "
            f"{best['GPU forward ms']:.1f}, backward {best['GPU backward ms']:.1f}, optimizer "
            f"{best['GPU optimizer ms']:.1f} ms); the rest is time the GPU waits: launch gaps, host work "
            f"(the host waited {best['data wait ms']:.2f} ms per step for data) and the check's per-epoch start")
    return "; ".join(parts) + "."


def steps_sentence(runs: Mapping[str, Mapping[str, Any]]) -> str:
    table = step_check_table(runs)
    if table.empty:
        return "No training-step check in this edition."
    faster = table[(table.step != "eager") & table["speed-up"].notna()]
    failed = table[(table.step != "eager") & table["speed-up"].isna()]
    ok = bool(faster["within tolerance"].astype(bool).all())
    best = faster.loc[faster.groupby("tower")["speed-up"].idxmax()] if len(faster) else faster
    text = ("The faster training steps " + ("all give" if ok else "do not all give")
            + " the eager step's per-epoch losses within the tolerance; the fastest per tower: "
            + ", ".join(f"{r.tower} {r.step} x{r._4:.2f}" for r in best.itertuples()) + ".")
    if len(failed):
        text += " Failed: " + ", ".join(f"{r.tower} {r.step}" for r in failed.itertuples()) + " (see the training chapters)."
    return text

