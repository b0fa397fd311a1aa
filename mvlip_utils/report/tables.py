"""The chapters' tables, values only, from an edition's runs (``run_folder.load_edition``): Tables 1 and 2
beside the paper's, seeds, throughput, resolution exponents, scan cost, training steps, per-class results."""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..measure.benchmark import BEST, PAPER, benchmark_rate, benchmark_record
from ..settings.encoders import marked, tower_name
from ..settings.profiles import ENCODER_LABELS, ENCODERS
from .findings import ALONE, LOOP, _pm, _speed, decoder_bound, growth_exponents

TABLE1_METRICS = {"accuracy": "Accuracy", "precision_weighted": "Precision (weighted)", "f1_weighted": "F1 (weighted)",
                  "precision_macro": "Precision (macro)", "recall_macro": "Recall (macro)", "f1_macro": "F1 (macro)",
                  "top5": "Top-5 accuracy", "zeroshot_loss": "Validation loss"}


def model_label(encoder: str) -> str:
    return marked(ENCODER_LABELS[encoder], encoder)


def tower_label(encoder: str, model_size: str = "paper") -> str:
    """The image tower's name ("tiny <family>" at the smoke size), marked when beyond the paper."""
    return marked(tower_name(encoder, model_size), encoder)


def _towers(runs: Mapping[str, Mapping[str, Any]], encoders) -> list[str]:
    return [tower_label(e, runs[e]["config"].get("model_size", "paper")) for e in encoders]


def mean_sd(values) -> str:
    """'0.4083 ± 0.0123' over seeds (the SD with ddof 1); one value alone, '–' for none."""
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    return _pm(values.mean(), values.std(ddof=1) if len(values) > 1 else math.nan) if len(values) else "–"


def paper_table1(ref: Mapping[str, Any]) -> pd.DataFrame:
    """Table 1 as the paper reports it, completed from the authors' last logged epoch (macro averages, zero-shot
    loss) for MVLIP and CLIP(Swin); CLIP(ViT) as released, not fine-tuned, in fp16."""
    logs, reported = ref["authors_logs"], ref["table1_final_epoch"]
    paper = {"vit": {k: float(v) for k, v in reported["vit_pretrained_not_finetuned_fp16"].items()}}
    paper["vit"]["zeroshot_loss"] = paper["vit"].pop("val_zeroshot_loss")
    for encoder in ("mambavision", "swin"):
        last = logs[logs.encoder == encoder].sort_values("epoch").iloc[-1]
        paper[encoder] = {k: float(last[k]) for k in TABLE1_METRICS if k in last.index}
        paper[encoder]["zeroshot_loss"] = float(last["val_zeroshot_loss"])
        paper[encoder].update({k: float(v) for k, v in reported[encoder].items()})
    return pd.DataFrame({name: [paper[encoder].get(k) for k in TABLE1_METRICS] for encoder, name in
                         (("mambavision", "MVLIP"), ("swin", "CLIP(Swin)"), ("vit", "CLIP(ViT) as released"))},
                        index=list(TABLE1_METRICS.values())).rename_axis("metric")


def table1(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Table 1 in an edition: each tower's final-epoch metrics, mean ± SD over its seeds."""
    return pd.DataFrame({model_label(encoder): [mean_sd(r["metrics"].get(k) for r in entry["runs"])
                                                for k in TABLE1_METRICS] for encoder, entry in runs.items()},
                        index=list(TABLE1_METRICS.values())).rename_axis("metric")


def seed_results(entry: Mapping[str, Any]) -> pd.DataFrame:
    """One encoder's seeds: each run's final metrics, then their mean and SD."""
    columns = {"accuracy": "accuracy", "top5": "top-5", "precision_weighted": "precision (w.)",
               "f1_weighted": "F1 (w.)", "f1_macro": "F1 (macro)", "zeroshot_loss": "loss"}
    frame = pd.DataFrame([{k: r["metrics"].get(k) for k in columns} for r in entry["runs"]],
                         index=[f"seed {r['seed']}" for r in entry["runs"]], dtype=float)
    if len(frame) > 1:
        frame.loc["mean"], frame.loc["SD"] = frame.mean(), frame.std(ddof=1)
    return frame.rename(columns=columns)


def before_training(entry: Mapping[str, Any]) -> pd.DataFrame:
    """The first run's zero-shot metrics before any training, one row per precision."""
    before = entry["runs"][0].get("before_training") or {}
    return pd.DataFrame({p: {"accuracy": m["accuracy"], "top-5": m["top5"], "F1 (weighted)": m["f1_weighted"],
                             "loss": m["zeroshot_loss"]} for p, m in before.items()}).T


def _against_vit(records: Mapping[str, Mapping[str, Any] | None]) -> dict[str, str]:
    gains = {e: _speed(record, records.get("vit")) for e, record in records.items() if e != "vit"}
    return {e: "–" if g is None else f"{g['gain']:+.1f}%" if g["real"] else "no real difference"
            for e, g in gains.items()}


def table2(runs: Mapping[str, Mapping[str, Any]], ref: Mapping[str, Any]) -> pd.DataFrame:
    """Table 2: the paper's throughput beside ours, each against CLIP(ViT); our percentages only where the
    difference is real (``findings._speed``) and the loop times the towers, not the JPEG decoder."""
    paper = ref["table2_throughput_images_per_s"]
    encoders = [e for e in ENCODERS if e in paper or e in runs] + [e for e in runs if e not in ENCODERS]
    loop, alone = ({e: benchmark_record(runs[e], **match) if e in runs else None for e in encoders}
                   for match in (LOOP, ALONE))
    bound = [e for e in encoders if e in runs and decoder_bound(runs[e])]  # the loop times their JPEG decoder
    loop_vs = {e: "decoder-bound" if e in bound or "vit" in bound else v for e, v in _against_vit(loop).items()}
    alone_vs = _against_vit(alone)
    rows = {model_label(e): {
        "paper": f"{paper[e]:.0f}" if e in paper else "–",
        "paper: vs CLIP(ViT)": f"{(paper[e] / paper['vit'] - 1) * 100:+.1f}%" if e in paper and e != "vit" else "–",
        "ours, paper's method": f"{loop[e]['images_per_s']:.0f}" if loop[e] else "–",
        "paper's method: vs CLIP(ViT)": loop_vs.get(e, "–"),
        "ours, towers alone": f"{alone[e]['images_per_s']:.0f}" if alone[e] else "–",
        "towers alone: vs CLIP(ViT)": alone_vs.get(e, "–")} for e in encoders}
    return pd.DataFrame(rows).T.rename_axis("model")


def benchmark_frame(runs: Mapping[str, Mapping[str, Any]], kind: str) -> pd.DataFrame:
    """The benchmark records of one ``kind`` of every encoder, with an ``encoder`` column."""
    frames = [entry["benchmark"][entry["benchmark"]["kind"] == kind].assign(encoder=encoder)
              for encoder, entry in runs.items() if entry.get("benchmark") is not None and "kind" in entry["benchmark"]]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def model_only_table(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The towers alone per tower, setting and mode: median images/s, p10-p90, peak memory, FLOP/s share."""
    frame = benchmark_frame(runs, "model_only")
    if frame.empty:
        return frame
    column = lambda name: frame[name] if name in frame else pd.Series(math.nan, index=frame.index)  # noqa: E731
    out = pd.DataFrame({
        "tower": _towers(runs, frame.encoder),
        "setting": frame.setting.map({PAPER: "paper's", BEST: "bf16, large batch"}).fillna(frame.setting),
        "mode": frame["mode"], "batch": frame.batch_size.astype(int), "images/s": frame.images_per_s,
        "p10-p90": [f"{lo:.0f}-{hi:.0f}" if pd.notna(lo) and pd.notna(hi) else "–"
                    for lo, hi in zip(column("images_per_s_p10"), column("images_per_s_p90"))],
        "peak GiB": column("peak_memory_bytes") / 2**30, "of peak FLOP/s": column("utilisation")})
    out = out.assign(order=out.setting.ne("paper's")).sort_values(["order", "mode"], kind="stable")
    return out.drop(columns="order").set_index("tower").dropna(axis=1, how="all")


def eval_loop_table(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The paper's method (the whole evaluation loop) per tower and data source, beside the tower alone."""
    frame = benchmark_frame(runs, "eval_loop")
    if frame.empty:
        return frame
    alone = {e: benchmark_rate(entry, **ALONE) for e, entry in runs.items()}
    out = pd.DataFrame({
        "tower": _towers(runs, frame.encoder),
        "data": frame.source.map({"jpeg": "JPEG decoding", "uint8_cache": "uint8 cache"}),
        "workers": frame.num_workers.astype(int), "images/s": frame.images_per_s,
        "slowest-fastest": [f"{lo:.0f}-{hi:.0f}" for lo, hi in zip(frame.images_per_s_min, frame.images_per_s_max)],
        "tower alone": frame.encoder.map(alone)})
    return out.set_index("tower")


def exponent_table(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Per tower: exponent b (time per image ~ pixels^b) measured and counted, the px range, ms at the largest."""
    exps = growth_exponents(runs)
    if exps.empty:
        return exps
    return pd.DataFrame({"tower": _towers(runs, exps.encoder),
                         "b measured": exps.measured, "b counted": exps.counted,
                         "px": [f"{a}-{b}" for a, b in zip(exps.smallest, exps.largest)],
                         "ms per image at largest": exps.ms_at_largest}).set_index("tower")


def sweep_failures(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The resolutions a sweep could not run (out of memory, a size the architecture cannot take)."""
    frame = benchmark_frame(runs, "resolution_sweep")
    if frame.empty or "images_per_s" not in frame:
        return pd.DataFrame()
    failed = frame[frame["images_per_s"].isna()]
    return pd.DataFrame({"tower": _towers(runs, failed.encoder), "px": failed.resolution.astype(int),
                         "why": ["out of memory" if oom else str(err)[:80] for oom, err in zip(failed.oom, failed.error)]})


def scan_cost_table(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """MambaVision with its selective scan against the scan replaced by its skip term."""
    frame = benchmark_frame(runs, "scan_cost")
    if frame.empty:
        return frame
    return pd.DataFrame({"mode": frame["mode"], "precision": frame.precision, "batch": frame.batch_size.astype(int),
                         "with scan": frame.images_per_s_with_scan, "scan removed": frame.images_per_s_without_scan,
                         "ratio": [f"{r:.3f}" if lo > 1 or hi < 1 else "within its spread"
                                   for r, lo, hi in zip(frame.ratio, frame.ratio_min, frame.ratio_max)],
                         "over rounds": [f"{lo:.3f}-{hi:.3f}" for lo, hi in zip(frame.ratio_min, frame.ratio_max)]})


def step_check_table(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """The training steps' check per tower and step: images/s and the losses against the eager step's."""
    return pd.DataFrame([{"tower": tower_label(encoder, entry["config"].get("model_size", "paper")),
                          "step": variant["train_step"], "images/s": variant.get("images_per_s"),
                          "loss difference": variant.get("max_rel_loss_difference"),
                          "same losses": {True: "yes", False: "no", None: "–"}[variant.get("within_tolerance")]}
                         for encoder, entry in runs.items()
                         for variant in (entry.get("step_check") or {}).get("variants", [])])


PROFILE_PHASES = ("forward", "backward", "optimizer")


def step_profile_table(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Where a profiled training step's ms go, per tower and step: GPU kernels by phase (on a CPU the host's)."""
    rows = []
    for encoder, entry in runs.items():
        check = entry.get("step_check") or {}
        for variant in check.get("variants", []):
            profile = variant.get("profile")
            if not profile or profile.get("error") or not variant.get("images_per_s"):
                continue
            step_ms = check["batch_size"] / variant["images_per_s"] * 1e3
            busy = profile["gpu_busy_ms"]
            on_gpu = busy is not None
            rows.append({"tower": tower_label(encoder, entry["config"].get("model_size", "paper")),
                         "step": variant["train_step"], "step ms": step_ms,
                         **{f"{phase} ms": profile[f"{'gpu' if on_gpu else 'host'}_{phase}_ms"]
                            for phase in PROFILE_PHASES},
                         "kernels ms": busy, "kernel share": busy / step_ms if on_gpu else None,
                         "data wait ms": profile["data_wait_ms"], "profiled steps": int(profile["steps"])})
    return pd.DataFrame(rows)


def top_kernels(check: Mapping[str, Any]) -> tuple[str | None, pd.DataFrame]:
    """The fastest profiled step with the eager losses and the kernels that took the most GPU time in it."""
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


def per_class(run: Mapping[str, Any], classnames: list[str]) -> pd.DataFrame:
    """Per-class accuracy of one run (from its per-image results), classes with images only."""
    frame = run["per_image"].groupby("label")["correct"].agg(["size", "mean"]).rename(
        columns={"size": "images", "mean": "accuracy"})
    frame.index = [classnames[i] for i in frame.index]
    frame.index.name = "class"
    return frame


def most_confused(run: Mapping[str, Any], classnames: list[str], n: int = 10) -> pd.DataFrame:
    """One run's ``n`` most often confused (true, predicted) class pairs: count, share of the true class."""
    images = run["per_image"]
    wrong = images[images["label"] != images["prediction"]]
    pairs = wrong.groupby(["label", "prediction"]).size().sort_values(ascending=False).head(n)
    totals = images.groupby("label").size()
    return pd.DataFrame({"true class": [classnames[t] for t, _ in pairs.index],
                         "predicted as": [classnames[p] for _, p in pairs.index],
                         "images": pairs.to_numpy(),
                         "of the class": [c / totals[t] for (t, _), c in pairs.items()]})


def deterministic_table(check: Mapping[str, Any] | None) -> pd.DataFrame:
    """The default mode, then each deterministic repeat: images/s, losses to 9 digits. Empty without a record."""
    record = (check or {}).get("deterministic")
    if not record or record.get("error"):
        return pd.DataFrame()
    rates = [record["default_images_per_s"], *record["images_per_s_repeats"]]
    return pd.DataFrame({"images/s": rates, "of the default's": [r / rates[0] for r in rates],
                         "loss per epoch": [", ".join(f"{x:.9f}" for x in values)
                                            for values in [record["default_losses"], *record["losses"]]]},
                        index=pd.Index(["default"] + [f"deterministic, repeat {i}" for i in range(1, len(rates))],
                                       name="mode"))


def history_summary(entry: Mapping[str, Any]) -> pd.DataFrame:
    """Per epoch, mean ± SD over an encoder's seeds: training loss, validation losses, accuracy."""
    frame = pd.concat([r["history"] for r in entry["runs"]])
    columns = {"train_loss": "training loss", "val_zeroshot_loss": "validation loss (zero-shot)",
               "val_loss": "validation loss (contrastive)", "accuracy": "accuracy"}
    return pd.DataFrame({label: frame.groupby("epoch")[key].agg(mean_sd) for key, label in columns.items()})


def seed_timings(entry: Mapping[str, Any]) -> pd.DataFrame:
    """Each seed's seconds (set-up, first/last epoch's training, validation, checkpoint wait), last images/s."""
    rows = {}
    for r in entry["runs"]:
        t = r.get("timings")
        if t is None or t.empty:
            continue
        first, last = t.iloc[0], t.iloc[-1]
        rows[f"seed {r['seed']}"] = {"set-up s": first["setup_seconds"], "first epoch s": first["train_seconds"],
                                     "last epoch s": last["train_seconds"], "validation s": last["validation_seconds"],
                                     "checkpoint wait s": last["checkpoint_seconds"],
                                     "images/s": last["train_images"] / last["train_seconds"]}
    return pd.DataFrame(rows).T
