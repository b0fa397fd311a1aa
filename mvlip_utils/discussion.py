"""The discussion's tables and verdicts: the paper's Table 1 and Table 2 beside our runs, and a verdict for
each of the paper's claims (9-10% better metrics, 37% lower validation loss, 33-41% higher throughput),
computed from the results files.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from .report import ENCODER_LABELS

TABLE1_METRICS = {"accuracy": "Accuracy", "precision_weighted": "Precision (weighted)",
                  "recall_weighted": "Recall (weighted)", "f1_weighted": "F1 (weighted)",
                  "precision_macro": "Precision (macro)", "recall_macro": "Recall (macro)",
                  "f1_macro": "F1 (macro)", "top5": "Top-5 accuracy",
                  "zeroshot_loss": "Validation loss (zero-shot CE)"}
HEADLINE = ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted")  # the paper's Table 1
BENCH_METHODS = {"eval_loop": "paper's way (whole eval loop)", "model_only": "model only"}


def relative_change(value: float, base: float) -> float:
    """(value - base) / base in percent; NaN when either is missing or base is 0."""
    try:
        value, base = float(value), float(base)
    except (TypeError, ValueError):
        return math.nan
    if not (math.isfinite(value) and math.isfinite(base)) or base == 0:
        return math.nan
    return (value - base) / base * 100.0


def paper_final_metrics(ref: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The paper's final-epoch numbers per encoder: Table 1, completed (macro averages, zero-shot loss)
    from the last epoch of the authors' logs."""
    logs = ref["authors_logs"]
    out: dict[str, dict[str, float]] = {}
    for encoder in ("mambavision", "swin"):
        last = logs[logs.encoder == encoder].sort_values("epoch").iloc[-1]
        row = {k: float(last[k]) for k in TABLE1_METRICS if k in last.index}
        row["zeroshot_loss"] = float(last["val_zeroshot_loss"])
        row.update({k: float(v) for k, v in ref["table1_final_epoch"][encoder].items()})
        out[encoder] = row
    return out


def table1(runs: Mapping[str, Mapping[str, Any]], ref: Mapping[str, Any]):
    """Table 1: the paper's final-epoch metrics beside ours (from each run's metrics.json), with the
    relative difference MVLIP vs CLIP(Swin) in percent for both."""
    import pandas as pd

    paper = paper_final_metrics(ref)
    frame = pd.DataFrame(index=list(TABLE1_METRICS.values()))
    for encoder in ("mambavision", "swin"):
        frame[f"paper {ENCODER_LABELS[encoder]}"] = [paper[encoder].get(k, math.nan) for k in TABLE1_METRICS]
    frame["paper: MVLIP vs CLIP(Swin) (%)"] = [
        relative_change(paper["mambavision"].get(k), paper["swin"].get(k)) for k in TABLE1_METRICS]
    for encoder, run in runs.items():
        frame[f"ours {ENCODER_LABELS.get(encoder, encoder)}"] = [
            float(run["metrics"].get(k, math.nan)) for k in TABLE1_METRICS]
    ours = {e: runs[e]["metrics"] for e in ("mambavision", "swin") if e in runs}
    frame["ours: MVLIP vs CLIP(Swin) (%)"] = [
        relative_change(ours["mambavision"].get(k), ours["swin"].get(k)) if len(ours) == 2 else math.nan
        for k in TABLE1_METRICS]
    frame.index.name = "metric"
    return frame


def benchmark_records(eval_loop: Mapping[str, Any], model_only: Mapping[str, Any], sweep=None) -> list[dict]:
    """The records 04_benchmark writes to benchmark.json, each tagged with its ``kind``: the paper's way
    (``benchmark.eval_loop_throughput``), the model alone (``benchmark.model_throughput``) and the rows
    of a ``benchmark.resolution_sweep``."""
    rows = [] if sweep is None else sweep.to_dict(orient="records")
    return ([{**eval_loop, "kind": "eval_loop"}, {**model_only, "kind": "model_only"}]
            + [{**row, "kind": "resolution_sweep"} for row in rows])


def benchmark_numbers(blob: Mapping[str, Any]) -> dict[str, float]:
    """images/s of a benchmark.json (written by 04_benchmark) per record kind ('eval_loop', 'model_only')."""
    out = {}
    for record in blob.get("records", []):
        if record.get("kind") in BENCH_METHODS and record.get("images_per_s") is not None:
            out[record["kind"]] = float(record["images_per_s"])
    return out


def table2(benchmarks: Mapping[str, Mapping[str, Any]], ref: Mapping[str, Any]):
    """Table 2: the paper's throughput beside ours measured both ways, each relative to CLIP(ViT)."""
    import pandas as pd

    paper = ref["table2_throughput_images_per_s"]
    encoders = [e for e in ENCODER_LABELS if e in paper or e in benchmarks]
    ours = {e: benchmark_numbers(benchmarks[e]) for e in encoders if e in benchmarks}
    frame = pd.DataFrame(index=[ENCODER_LABELS[e] for e in encoders])
    frame["paper images/s"] = [paper.get(e, math.nan) for e in encoders]
    frame["paper vs CLIP(ViT) (%)"] = [relative_change(paper.get(e), paper.get("vit")) if e != "vit" else math.nan
                                       for e in encoders]
    for method, label in BENCH_METHODS.items():
        values = {e: ours.get(e, {}).get(method, math.nan) for e in encoders}
        frame[f"ours, {label}: images/s"] = [values[e] for e in encoders]
        frame[f"ours, {label}: vs CLIP(ViT) (%)"] = [
            relative_change(values[e], values.get("vit")) if e != "vit" else math.nan for e in encoders]
    frame.index.name = "model"
    return frame


def judge(value: float, claimed: float, evidence: bool) -> str:
    """The verdict on one claim: ``value`` is our relative change where the paper claims >= ``claimed``
    percent (in the direction the paper says is better)."""
    if value is None or not math.isfinite(value):
        return "not measured (a run is missing)"
    if not evidence:
        return "no verdict: random-weight smoke run, neither confirms nor refutes the paper"
    if value >= claimed:
        return "supported"
    if value > 0:
        return "partly: same direction, smaller than claimed"
    return "not supported: the opposite direction"


def claim_verdicts(t1, t2, evidence: bool):
    """One row per claim of the paper: what it says, what our data show, and the verdict.
    ``evidence``: whether the runs can speak to the paper at all (pretrained towers, paper protocol)."""
    import pandas as pd

    claims = []
    ours_col, paper_col = "ours: MVLIP vs CLIP(Swin) (%)", "paper: MVLIP vs CLIP(Swin) (%)"
    headline = [t1.loc[TABLE1_METRICS[k], ours_col] for k in HEADLINE]
    worst = min(headline) if all(math.isfinite(v) for v in headline) else math.nan
    claims.append(("MVLIP beats CLIP(Swin) by 9-10% on accuracy, precision, recall and F1 (Table 1)",
                   "{:+.2f}% to {:+.2f}%".format(*_span([t1.loc[TABLE1_METRICS[k], paper_col] for k in HEADLINE])),
                   "{:+.2f}% to {:+.2f}%".format(*_span(headline)) if math.isfinite(worst) else "–",
                   worst, 9.0))
    loss = t1.loc[TABLE1_METRICS["zeroshot_loss"], ours_col]
    claims.append(("MVLIP's validation loss is 37% lower than CLIP(Swin)'s",
                   "{:.1f}% lower".format(-t1.loc[TABLE1_METRICS["zeroshot_loss"], paper_col]),
                   "{:.1f}% lower".format(-loss) if math.isfinite(loss) else "–", -loss, 37.0))
    mv = ENCODER_LABELS["mambavision"]
    for method, label in BENCH_METHODS.items():
        vs_vit = t2.loc[mv, f"ours, {label}: vs CLIP(ViT) (%)"]
        claims.append((f"MVLIP's throughput is 33.5% higher than CLIP(ViT)'s (Table 2); ours measured {label}",
                       "{:+.2f}%".format(t2.loc[mv, "paper vs CLIP(ViT) (%)"]),
                       "{:+.2f}%".format(vs_vit) if math.isfinite(vs_vit) else "–", vs_vit, 33.0))
        swin_col = f"ours, {label}: images/s"
        vs_swin = relative_change(t2.loc[mv, swin_col], t2.loc[ENCODER_LABELS["swin"], swin_col])
        paper_vs_swin = relative_change(t2.loc[mv, "paper images/s"], t2.loc[ENCODER_LABELS["swin"], "paper images/s"])
        claims.append((f"MVLIP's throughput is 41% higher than CLIP(Swin)'s (Table 2); ours measured {label}",
                       "{:+.2f}%".format(paper_vs_swin),
                       "{:+.2f}%".format(vs_swin) if math.isfinite(vs_swin) else "–", vs_swin, 41.0))
    rows = [{"claim": c, "paper": p, "ours": o, "verdict": judge(v, lo, evidence)} for c, p, o, v, lo in claims]
    return pd.DataFrame(rows)


def _span(values: Sequence[float]) -> tuple[float, float]:
    return min(values), max(values)


def runs_are_evidence(runs: Mapping[str, Mapping[str, Any]]) -> bool:
    """Only paper-size towers from pretrained weights can confirm or refute the paper."""
    return bool(runs) and all(run["config"].get("pretrained") and run["config"].get("model_size") == "paper"
                              for run in runs.values())
