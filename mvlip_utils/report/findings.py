"""The paper's claims, one verdict each, computed from the run folders of every edition of the study.

Vocabulary (one for every claim): **supported** (our measurement reaches the paper's claim), **partly** (the
same direction, smaller than claimed), **not supported** (no difference, or the opposite direction),
**no verdict** (no run of the conditions the claim needs; the reason names the missing condition).

Rules (the findings chapter prints them):
- Accuracy, precision, recall, F1 (Table 1) and the validation loss: only runs with the paper's
  architectures, pretrained weights, a 1,000-class ImageNet-like validation set (not a generated one), 224 px
  and the paper's number of epochs can give a verdict. A difference smaller than twice its standard error
  (binomial, over the validation images) is "no difference".
- Throughput (Table 2): the paper-size towers at 224 px on a GPU (the weights' values do not change the
  speed, so random weights qualify). The verdict compares the image towers alone at the paper's
  conditions (the run's float32 mode, batch 32, inference), each the median of repeated batches; a gap
  smaller than ``MIN_SPEED_GAP_PERCENT`` or inside the two measurements' 10th-90th percentile ranges is
  "no difference". The paper's own method (the whole evaluation loop with JPEG decoding) is given beside it.
- Linear versus quadratic scaling: the fitted exponent b of time per image against the pixel count
  (1 linear, 2 quadratic) of the paper-size towers on a GPU; supported when MambaVision is about linear
  (b <= ``LINEAR_MAX``), ViT about quadratic (b >= ``QUADRATIC_MIN``) and MVLIP faster than CLIP(ViT) at the
  largest resolution measured.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import pandas as pd

from ..measure.sweep import fit_growth_exponent
from ..measure.records import BEST, PAPER, benchmark_record
from ..settings.profiles import ENCODER_LABELS, ENCODERS

VERDICTS = ("supported", "partly", "not supported", "no verdict")
MIN_SPEED_GAP_PERCENT = 3.0
LINEAR_MAX, QUADRATIC_MIN = 1.2, 1.8
TABLE1_CLAIM_METRICS = {"accuracy": "accuracy", "precision_weighted": "precision (weighted)",
                        "recall_weighted": "recall (weighted)", "f1_weighted": "F1 (weighted)"}


def relative_change(value: float, base: float) -> float:
    """(value - base) / base in percent; NaN when either is missing or base is 0."""
    try:
        value, base = float(value), float(base)
    except (TypeError, ValueError):
        return math.nan
    if not (math.isfinite(value) and math.isfinite(base)) or base == 0:
        return math.nan
    return (value - base) / base * 100.0


def chance_reason(key: str, a: float, b: float, n_classes: Any, n_val: Any) -> str | None:
    """Why the relative change of metric ``key`` between ``a`` and ``b`` (two runs of one edition) says
    nothing, or None when it may: both values are at the chance level of ``n_classes`` classes. A score
    (accuracy, precision, recall, F1, weighted or macro) is at chance when it is no higher than a uniform
    guess's k/n_classes (k = 5 for top-5) plus twice that rate's binomial standard error over the ``n_val``
    validation images; the zero-shot loss when it is no lower than a uniform guess's ln(n_classes). (Random
    weights give such values: a ratio of two of them is noise, however large.)"""
    try:
        a, b, n_classes, n_val = float(a), float(b), int(n_classes), int(n_val)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(a) and math.isfinite(b)) or n_classes < 2:
        return None
    if key == "zeroshot_loss":
        level = math.log(n_classes)
        return f"both at chance (a uniform guess's ln {n_classes} = {level:.3f} or above)" if min(a, b) >= level else None
    if n_val < 1:
        return None
    k = 5 if key == "top5" else 1
    rate = min(1.0, k / n_classes)
    ceiling = rate + 2 * math.sqrt(rate * (1 - rate) / n_val)
    return (f"both at chance ({k}/{n_classes}, at most {ceiling:.4f} over {n_val} images)"
            if max(a, b) <= ceiling else None)


# ------------------------------------------------------------------------------------------ the claims
def paper_claims(ref: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The paper's claims with its numbers, computed from ``paper_tables.json``: one per Table 1 metric,
    the validation loss, throughput against CLIP(ViT) and against CLIP(Swin), and the scaling argument."""
    t1, claims, t2 = ref["table1_final_epoch"], ref["claims"], ref["table2_throughput_images_per_s"]
    low_metrics = float(min(claims["metrics_improvement_percent"]))
    out = []
    for key, name in TABLE1_CLAIM_METRICS.items():
        mv, swin = t1["mambavision"][key], t1["swin"][key]
        out.append(dict(id=key, kind="table1", metric=key, threshold=low_metrics, short=name,
                        claim=f"MVLIP's {name} is {low_metrics:.0f}-{max(claims['metrics_improvement_percent']):.0f}% "
                              f"above CLIP(Swin)'s (Table 1)",
                        paper=f"{relative_change(mv, swin):+.2f}% ({mv:.4f} vs {swin:.4f}, "
                              f"{(mv - swin) * 100:+.2f} points)"))
    loss = claims["val_zeroshot_loss_final"]
    reduction = -relative_change(loss["mambavision"], loss["swin"])
    out.append(dict(id="val_loss", kind="loss", threshold=float(claims["val_loss_reduction_percent"]),
                    short="validation loss",
                    claim=f"MVLIP's validation loss is {claims['val_loss_reduction_percent']}% lower than CLIP(Swin)'s",
                    paper=f"{reduction:.1f}% lower ({loss['mambavision']:.4f} vs {loss['swin']:.4f})"))
    for other in ("vit", "swin"):
        gain = relative_change(t2["mambavision"], t2[other])
        out.append(dict(id=f"throughput_{other}", kind="throughput", other=other, threshold=math.floor(gain),
                        short=f"throughput against {ENCODER_LABELS[other]}",
                        claim=f"MVLIP's throughput is {math.floor(gain):.0f}% above {ENCODER_LABELS[other]}'s (Table 2)",
                        paper=f"{gain:+.1f}% ({t2['mambavision']:.1f} vs {t2[other]:.1f} images/s)"))
    out.append(dict(id="scaling", kind="scaling", threshold=None, short="linear against quadratic scaling",
                    claim="MambaVision's cost grows linearly with the image size, ViT's quadratically (self-"
                          "attention), so MVLIP is the more efficient at high resolution",
                    paper="argued, not measured"))
    return out


# ----------------------------------------------------------------------------------- evidence rules
def accuracy_evidence_gaps(run: Mapping[str, Any], ref: Mapping[str, Any]) -> list[str]:
    """What a run lacks to speak to Table 1 and the loss claim (empty: it can)."""
    config, metrics, protocol = run["config"], run["metrics"], ref["protocol"]
    gaps = []
    if config.get("model_size") != "paper":
        gaps.append(f"tiny towers (model_size={config.get('model_size')!r})")
    if not config.get("pretrained"):
        gaps.append("random weights (pretrained=False)")
    if str(config.get("data", "")).startswith("generated"):
        gaps.append(f"generated data (data={config.get('data')!r})")
    if metrics.get("n_classes") != protocol["n_classes"]:
        gaps.append(f"{metrics.get('n_classes')} classes, not {protocol['n_classes']}")
    if config.get("image_size") != protocol["image_size"]:
        gaps.append(f"{config.get('image_size')} px, not {protocol['image_size']}")
    if metrics.get("epochs") != protocol["epochs"]:
        gaps.append(f"{metrics.get('epochs')} epochs, not {protocol['epochs']}")
    return gaps


def ran_on_gpu(run: Mapping[str, Any]) -> bool:
    """Whether the run ran on a CUDA device (its config.json's ``resolved_device``)."""
    return str(run["config"].get("resolved_device", "")).startswith("cuda")


def speed_evidence_gaps(run: Mapping[str, Any], ref: Mapping[str, Any]) -> list[str]:
    """What a run lacks to speak to the throughput and scaling claims (empty: it can)."""
    config = run["config"]
    gaps = []
    if config.get("model_size") != "paper":
        gaps.append(f"tiny towers (model_size={config.get('model_size')!r})")
    if config.get("image_size") != ref["protocol"]["image_size"]:
        gaps.append(f"{config.get('image_size')} px, not {ref['protocol']['image_size']}")
    if not ran_on_gpu(run):
        gaps.append(f"measured on {config.get('device_name', 'a CPU')}, not a GPU")
    if run.get("benchmark") is None:
        gaps.append("no benchmark.json")
    return gaps


def absent_run_reasons(encoders, runs: Mapping[str, Any], absent: Mapping[str, str] | None = None) -> list[str]:
    """Why each of ``encoders`` has no run in ``runs``: "the CLIP(Swin) run of this edition is missing" (or
    "failed: ...", "is partial: 1 of 2 epochs", from ``absent``: ``results.unfinished_runs``)."""
    absent = absent or {}
    return [f"the {ENCODER_LABELS[e]} run of this edition {absent.get(e, 'is not among its finished runs')}"
            for e in encoders if e not in runs]


def _gaps(runs: Mapping[str, Mapping[str, Any]], encoders, rule, ref, absent=None) -> list[str]:
    missing = absent_run_reasons(encoders, runs, absent)
    if missing:
        return missing
    gaps: list[str] = []
    for e in encoders:
        gaps += [g for g in rule(runs[e], ref) if g not in gaps]
    return gaps


# ----------------------------------------------------------------------------------------- verdicts
def _verdict(gain: float, threshold: float, no_difference: bool) -> str:
    if no_difference or not math.isfinite(gain):
        return "not supported"
    if gain >= threshold:
        return "supported"
    return "partly" if gain > 0 else "not supported"


def _direction(gain: float, no_difference: bool, better: str, worse: str) -> str:
    return "no difference" if no_difference else (better if gain > 0 else worse)


def judge_table1(claim: Mapping[str, Any], runs: Mapping[str, Any], ref: Mapping[str, Any],
                 absent: Mapping[str, str] | None = None) -> dict[str, Any]:
    gaps = _gaps(runs, ("mambavision", "swin"), accuracy_evidence_gaps, ref, absent)
    mv, sw = (runs[e]["metrics"] if e in runs else {} for e in ("mambavision", "swin"))
    key = claim["metric"]
    a, b = float(mv.get(key, math.nan)), float(sw.get(key, math.nan))
    gain = relative_change(a, b)
    noise = chance_reason(key, a, b, mv.get("n_classes"), mv.get("n_val"))
    ours = (f"{noise} ({a:.4f} vs {b:.4f})" if noise else
            f"{gain:+.2f}% ({a:.4f} vs {b:.4f})" if math.isfinite(gain) else "–")
    if gaps:
        return dict(ours=ours, verdict="no verdict", reason="; ".join(gaps))
    n = int(mv.get("n_val", 0)) or 1
    se = math.sqrt(max(a * (1 - a), 0) / n + max(b * (1 - b), 0) / n)
    same = abs(a - b) < 2 * se
    return dict(ours=ours, verdict=_verdict(gain, claim["threshold"], same),
                reason=f"{_direction(gain, same, 'higher', 'lower')}: {(a - b) * 100:+.2f} points, twice the "
                       f"standard error is {2 * se * 100:.2f} points over {n} images")


def judge_loss(claim, runs, ref, absent=None) -> dict[str, Any]:
    gaps = _gaps(runs, ("mambavision", "swin"), accuracy_evidence_gaps, ref, absent)
    a, b = (float(runs[e]["metrics"].get("zeroshot_loss", math.nan)) if e in runs else math.nan
            for e in ("mambavision", "swin"))
    reduction = -relative_change(a, b)
    mv = runs["mambavision"]["metrics"] if "mambavision" in runs else {}
    noise = chance_reason("zeroshot_loss", a, b, mv.get("n_classes"), mv.get("n_val"))
    ours = (f"{noise} ({a:.4f} vs {b:.4f})" if noise else
            f"{reduction:.1f}% lower ({a:.4f} vs {b:.4f})" if math.isfinite(reduction) else "–")
    if gaps:
        return dict(ours=ours, verdict="no verdict", reason="; ".join(gaps))
    return dict(ours=ours, verdict=_verdict(reduction, claim["threshold"], False),
                reason=f"MVLIP's zero-shot cross-entropy is {'lower' if reduction > 0 else 'not lower'}")


def speed_record(run: Mapping[str, Any], mode: str = "inference", setting: str = PAPER) -> dict | None:
    """The model-only record of a run's benchmark at ``setting`` and ``mode`` (None if absent)."""
    return benchmark_record(run, kind="model_only", setting=setting, mode=mode)


def eval_loop_record(run: Mapping[str, Any], source: str = "jpeg") -> dict | None:
    """The record of the paper's method (the whole evaluation loop) from ``source`` (None if absent)."""
    return benchmark_record(run, kind="eval_loop", source=source)


def speed_gap(a: Mapping[str, Any], b: Mapping[str, Any], spread_low: str = "images_per_s_p10",
              spread_high: str = "images_per_s_p90") -> tuple[float, bool]:
    """(gain of a over b in percent, whether that is no difference): under MIN_SPEED_GAP_PERCENT, or the two
    spreads (10th-90th percentile, or slowest-fastest pass) overlap."""
    gain = relative_change(a["images_per_s"], b["images_per_s"])
    overlap = False
    if all(isinstance(r.get(k), (int, float)) for r in (a, b) for k in (spread_low, spread_high)):
        overlap = a[spread_low] <= b[spread_high] and b[spread_low] <= a[spread_high]
    return gain, (not math.isfinite(gain)) or abs(gain) < MIN_SPEED_GAP_PERCENT or overlap


def judge_throughput(claim, runs, ref, absent=None) -> dict[str, Any]:
    other = claim["other"]
    gaps = _gaps(runs, ("mambavision", other), speed_evidence_gaps, ref, absent)
    if gaps:
        return dict(ours="–", verdict="no verdict", reason="; ".join(gaps))
    a, b = speed_record(runs["mambavision"]), speed_record(runs[other])
    if a is None or b is None:
        return dict(ours="–", verdict="no verdict", reason="no model-only record at the paper's conditions")
    gain, same = speed_gap(a, b)
    la, lb = eval_loop_record(runs["mambavision"]), eval_loop_record(runs[other])
    loop = ""
    if la and lb:
        loop_gain, loop_same = speed_gap(la, lb, "images_per_s_min", "images_per_s_max")
        loop = (f"; the paper's method (whole loop, JPEG in {int(la['num_workers'])} workers): {loop_gain:+.1f}% "
                f"({_direction(loop_gain, loop_same, 'faster', 'slower')})")
    ours = f"{gain:+.1f}% ({a['images_per_s']:.0f} vs {b['images_per_s']:.0f} images/s, model only)"
    return dict(ours=ours, verdict=_verdict(gain, claim["threshold"], same),
                reason=f"MVLIP is {_direction(gain, same, 'faster', 'slower')} than {ENCODER_LABELS[other]} at "
                       f"{a['precision']}, batch {int(a['batch_size'])}, on {a.get('device_name')}" + loop)


def growth_exponents(runs: Mapping[str, Any]) -> pd.DataFrame:
    """Per encoder with a resolution sweep: the time and memory exponents (cost ~ pixels^b), the largest
    resolution measured and the ms per image there."""
    rows = []
    for encoder, run in runs.items():
        frame = run.get("benchmark")
        if frame is None or "kind" not in frame:
            continue
        sweep = frame[(frame["kind"] == "resolution_sweep") & frame["images_per_s"].notna()]
        if len(sweep) < 2:
            continue
        memory = sweep["marginal_memory_per_image_bytes"] if "marginal_memory_per_image_bytes" in sweep else None
        top = sweep.loc[sweep["pixels"].idxmax()]
        rows.append({"encoder": encoder,
                     "time exponent": fit_growth_exponent(sweep["pixels"], sweep["seconds_per_image"]),
                     "memory exponent": (fit_growth_exponent(sweep["pixels"], memory)
                                         if memory is not None and memory.notna().sum() >= 2 else math.nan),
                     "largest resolution": int(top["resolution"]),
                     "ms per image there": float(top["seconds_per_image"]) * 1e3})
    return pd.DataFrame(rows)


def judge_scaling(claim, runs, ref, absent=None) -> dict[str, Any]:
    gaps = _gaps(runs, ("mambavision", "vit"), speed_evidence_gaps, ref, absent)
    exps = growth_exponents({e: runs[e] for e in ("mambavision", "vit") if e in runs})
    if gaps or len(exps) < 2:
        return dict(ours="–", verdict="no verdict", reason="; ".join(gaps) or "no resolution sweep")
    exps = exps.set_index("encoder")
    mv, vit = exps.loc["mambavision"], exps.loc["vit"]
    ours = (f"b = {mv['time exponent']:.2f} (MambaVision-B), {vit['time exponent']:.2f} (ViT-B/32) up to "
            f"{int(mv['largest resolution'])} px")
    linear, quadratic = mv["time exponent"] <= LINEAR_MAX, vit["time exponent"] >= QUADRATIC_MIN
    faster = mv["ms per image there"] < vit["ms per image there"]
    if linear and quadratic and faster:
        verdict = "supported"
    elif mv["time exponent"] < vit["time exponent"] and (faster or quadratic):
        verdict = "partly"
    else:
        verdict = "not supported"
    return dict(ours=ours, verdict=verdict,
                reason=(f"MambaVision-B {'is' if linear else 'is not'} about linear, ViT-B/32 "
                        f"{'is' if quadratic else 'is not'} quadratic in this range; at "
                        f"{int(mv['largest resolution'])} px MVLIP takes {mv['ms per image there']:.2f} ms per image "
                        f"against CLIP(ViT)'s {vit['ms per image there']:.2f}"))


JUDGES = {"table1": judge_table1, "loss": judge_loss, "throughput": judge_throughput, "scaling": judge_scaling}


def paper_runs(runs: Mapping[str, Any]) -> dict[str, Any]:
    """The runs of the paper's towers: the claims are the paper's, judged on its towers only (an encoder
    beyond the paper, ``encoders``, never changes a verdict)."""
    return {e: run for e, run in runs.items() if e in ENCODERS}


def judge(claim: Mapping[str, Any], runs: Mapping[str, Any], ref: Mapping[str, Any],
          absent: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The verdict on one claim from one edition's runs (those of the paper's towers): {ours, verdict, reason}.
    ``absent``: {encoder: how its run is not finished} (``results.unfinished_runs``), named in the reason of a
    claim that needs it."""
    absent = {e: why for e, why in (absent or {}).items() if e in ENCODERS}
    out = JUDGES[claim["kind"]](claim, paper_runs(runs), ref, absent)
    assert out["verdict"] in VERDICTS, out
    return out


# ------------------------------------------------------------------------------------------ tables
def read_editions(results_dir, profiles, encoders) -> tuple[dict[str, dict], dict[str, dict[str, str]]]:
    """The editions the findings read: ({profile: its finished runs}, {profile: {encoder: how its run is not
    finished}}), for every profile in ``profiles`` with any run folder (finished, partial or failed); a
    profile with none is left out."""
    from ..train.results import load_all_runs, unfinished_runs

    editions, absent = {}, {}
    for profile in profiles:
        runs, unfinished = load_all_runs(results_dir, profile, encoders), unfinished_runs(results_dir, profile, encoders)
        if runs or any(not phrase.endswith("is missing") for phrase in unfinished.values()):
            editions[profile], absent[profile] = runs, unfinished
    return editions, absent


def unfinished_sentence(absent: Mapping[str, Mapping[str, str]]) -> str:
    """The runs of the editions read that are not finished, and so give no verdict ("" when none)."""
    parts = [f"in **{profile}** the {ENCODER_LABELS[e]} run {phrase}" for profile, runs in absent.items()
             for e, phrase in runs.items()]
    return ("Runs without a verdict of their own: " + "; ".join(parts) + ".") if parts else ""


VERDICT_COLUMNS = ["claim id", "claim", "short", "edition", "ours", "verdict", "reason"]


def verdicts_by_edition(editions: Mapping[str, Mapping[str, Any]], ref: Mapping[str, Any],
                        absent: Mapping[str, Mapping[str, str]] | None = None) -> pd.DataFrame:
    """One row per (claim, edition): what that edition's runs say (``editions``: {profile: runs}; ``absent``:
    {profile: {encoder: how its run is not finished}}, ``read_editions``'). No editions: no rows."""
    rows = []
    for claim in paper_claims(ref):
        for profile, runs in editions.items():
            rows.append({"claim id": claim["id"], "claim": claim["claim"], "short": claim["short"], "edition": profile,
                         **judge(claim, runs, ref, (absent or {}).get(profile))})
    return pd.DataFrame(rows, columns=VERDICT_COLUMNS)


def verdicts_by_claim(editions: Mapping[str, Mapping[str, Any]], ref: Mapping[str, Any],
                      absent: Mapping[str, Mapping[str, str]] | None = None) -> pd.DataFrame:
    """``verdicts_by_edition`` for the reader: indexed by the claim's short name and the edition (so a claim
    is named once, not on every edition's row), with what the edition measured and its verdict."""
    detail = verdicts_by_edition(editions, ref, absent).rename(columns={"short": "the paper's claim on"})
    return detail.set_index(["the paper's claim on", "edition"])[["ours", "verdict"]]


def findings_table(editions: Mapping[str, Mapping[str, Any]], ref: Mapping[str, Any],
                   absent: Mapping[str, Mapping[str, str]] | None = None) -> pd.DataFrame:
    """One row per claim: the paper's number, ours from the edition with evidence (the last such in
    ``editions``' order, so list them from the least to the most faithful), the verdict and the reason."""
    detail = verdicts_by_edition(editions, ref, absent)
    rows = []
    for claim in paper_claims(ref):
        mine = detail[detail["claim id"] == claim["id"]]
        if mine.empty:
            rows.append({"claim": claim["claim"], "paper": claim["paper"], "ours": "–", "verdict": "no verdict",
                         "reason": "no edition has a run"})
            continue
        with_evidence = mine[mine["verdict"] != "no verdict"]
        pick = (with_evidence if len(with_evidence) else mine).iloc[-1]
        closest = mine.iloc[-1]  # editions are listed from the least to the most faithful
        reason = pick["reason"] if len(with_evidence) else (
            f"no edition has the conditions; the closest, {closest['edition']}: {closest['reason']}")
        rows.append({"claim": claim["claim"], "paper": claim["paper"],
                     "ours": f"{pick['ours']} [{pick['edition']}]" if len(with_evidence) else "–",
                     "verdict": pick["verdict"], "reason": reason})
    return pd.DataFrame(rows)


def summary_sentence(table: pd.DataFrame) -> str:
    """Which claims have a verdict, and which wait for runs (computed from the findings table)."""
    waiting = table[table.verdict == "no verdict"]
    judged = table[table.verdict != "no verdict"]
    parts = []
    if len(judged):
        parts.append("Judged: " + "; ".join(f"{r.claim.split(' (')[0]}: *{r.verdict}*" for r in judged.itertuples()) + ".")
    if len(waiting):
        parts.append(f"{len(waiting)} claim(s) wait for runs that meet their conditions (a paper-profile run, with "
                     "the pretrained towers on ImageNet-mini, is what can judge Table 1 and the loss).")
    return " ".join(parts)


def throughput_overview(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per tower and condition for ``plots.throughput_by_condition``: the towers alone at the paper's
    conditions (inference, training step) and at the best settings, the paper's method with JPEG decoding
    and from the uint8 cache, with their spreads."""
    conditions = [("model_only", {"setting": PAPER, "mode": "inference"}, "alone, paper's conditions, inference"),
                  ("model_only", {"setting": PAPER, "mode": "train"}, "alone, paper's conditions, training step"),
                  ("model_only", {"setting": BEST, "mode": "inference"}, "alone, bf16 large batch, inference"),
                  ("eval_loop", {"source": "jpeg"}, "paper's method, JPEG decoding"),
                  ("eval_loop", {"source": "uint8_cache"}, "paper's method, uint8 cache")]
    rows = []
    for encoder, run in paper_runs(runs).items():
        for kind, match, label in conditions:
            r = benchmark_record(run, kind=kind, **match)
            if r is None or pd.isna(r.get("images_per_s")):
                continue
            low, high = (r.get("images_per_s_p10"), r.get("images_per_s_p90")) if kind == "model_only" else (
                r.get("images_per_s_min"), r.get("images_per_s_max"))
            rows.append({"tower": ENCODER_LABELS[encoder], "condition": label, "images/s": float(r["images_per_s"]),
                         "low": low, "high": high})
    return pd.DataFrame(rows)
