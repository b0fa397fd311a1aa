"""The paper's claims, one verdict each, from the run folders of every edition of the study.

Verdicts: supported (our measurement reaches the claim), partly (a real difference in the claimed direction,
smaller than claimed), not supported (no real difference, or the opposite one), no verdict (no run of the
conditions the claim needs, or a range that cannot test it). The rules' constants are here and in ``stats``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Mapping

import numpy as np
import pandas as pd

from ..measure.benchmark import PAPER, benchmark_record
from ..measure.sweep import fit_growth_exponent
from ..settings.profiles import ENCODER_LABELS, ENCODERS
from . import stats

VERDICTS = ("supported", "partly", "not supported", "no verdict")
MIN_SPEED_GAP_PERCENT = 3.0   # throughput: a smaller gap is no difference
DECODER_BOUND_SHARE = 2 / 3   # throughput: a JPEG loop under this share of its uint8-cache loop times the decoder
EXPONENT_GAP = 0.1            # scaling: exponents closer than this grow alike
TABLE1_METRICS = {"accuracy": "accuracy", "precision_weighted": "precision (weighted)", "f1_weighted": "F1 (weighted)"}
RELEASED_ROUNDING = 0.005     # the authors' logs give CLIP as released to two decimals
TOWER_SHORT = {"mambavision": "MambaVision", "swin": "Swin", "vit": "ViT"}
LOOP = {"kind": "eval_loop", "source": "jpeg"}            # the paper's method: the evaluation loop, JPEG decoding
CACHE = {"kind": "eval_loop", "source": "uint8_cache"}    # the same loop from the uint8 cache
ALONE = {"kind": "model_only", "setting": PAPER, "mode": "inference"}  # the towers alone
SPREAD = {"eval_loop": ("images_per_s_min", "images_per_s_max"), "model_only": ("images_per_s_p10", "images_per_s_p90")}


def relative_change(value: float, base: float) -> float:
    """(value - base) / base in percent; NaN when either is not finite or base is 0."""
    value, base = float(value), float(base)
    return (value - base) / base * 100.0 if math.isfinite(value) and math.isfinite(base) and base else math.nan


def paper_claims(ref: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The paper's claims with its own numbers: Table 1's metrics (weighted recall is accuracy), the validation
    loss, throughput against CLIP(ViT) and CLIP(Swin), the scaling argument, CLIP(ViT) as released."""
    t1, claims, t2 = ref["table1_final_epoch"], ref["claims"], ref["table2_throughput_images_per_s"]
    low, high = float(min(claims["metrics_improvement_percent"])), max(claims["metrics_improvement_percent"])
    out = []
    for key, name in TABLE1_METRICS.items():
        mv, swin = t1["mambavision"][key], t1["swin"][key]
        out.append(dict(id=key, kind="table1", metric=key, threshold=low, short=name,
                        claim=f"MVLIP's {name} is {low:.0f}-{high:.0f}% above CLIP(Swin)'s (Table 1)",
                        paper=f"{relative_change(mv, swin):+.2f}% ({mv:.4f} vs {swin:.4f})"))
    loss = claims["val_zeroshot_loss_final"]
    out.append(dict(id="val_loss", kind="table1", metric="zeroshot_loss", short="validation loss",
                    threshold=float(claims["val_loss_reduction_percent"]),
                    claim=f"MVLIP's validation loss is {claims['val_loss_reduction_percent']}% lower than CLIP(Swin)'s",
                    paper=f"{-relative_change(loss['mambavision'], loss['swin']):.1f}% lower "
                          f"({loss['mambavision']:.4f} vs {loss['swin']:.4f})"))
    for other in ("vit", "swin"):
        gain = relative_change(t2["mambavision"], t2[other])
        out.append(dict(id=f"throughput_{other}", kind="throughput", other=other, threshold=math.floor(gain),
                        short=f"throughput against {ENCODER_LABELS[other]}",
                        claim=f"MVLIP's throughput is {math.floor(gain):.0f}% above {ENCODER_LABELS[other]}'s (Table 2)",
                        paper=f"{gain:+.1f}% ({t2['mambavision']:.0f} vs {t2[other]:.0f} images/s)"))
    out.append(dict(id="scaling", kind="scaling", threshold=None, short="scaling with resolution",
                    claim="MambaVision's cost grows linearly with the image size, ViT's quadratically, so MVLIP is "
                          "the more efficient at high resolution",
                    paper="argued, not measured"))
    released = t1["vit_pretrained_not_finetuned_fp16"]["accuracy"]
    out.append(dict(id="clip_released", kind="released", threshold=released, short="CLIP(ViT) as released",
                    claim="CLIP ViT-B/32 as released, not fine-tuned, in fp16, scores this zero-shot accuracy "
                          "(the authors' logs)",
                    paper=f"{released:.2f}"))
    return out


def _off(config: Mapping[str, Any], protocol: Mapping[str, Any], key: str, unit: str) -> list[str]:
    return [f"{config.get(key)} {unit}, not {protocol[key]}"] if config.get(key) != protocol[key] else []


def accuracy_gaps(entry: Mapping[str, Any], ref: Mapping[str, Any], epochs: bool = True) -> list[str]:
    """What an encoder's runs lack to speak to Table 1 and the loss (empty: they can)."""
    config, protocol = entry["config"], ref["protocol"]
    gaps = [gap for gap, lacks in (("tiny towers", config.get("model_size") != "paper"),
                                   ("random weights", not config.get("pretrained")),
                                   ("generated data", str(config.get("data", "")).startswith("generated"))) if lacks]
    gaps += _off(config, protocol, "n_classes", "classes") + _off(config, protocol, "image_size", "px")
    return gaps + (_off(config, protocol, "epochs", "epochs") if epochs else [])


def speed_gaps(entry: Mapping[str, Any], ref: Mapping[str, Any]) -> list[str]:
    """What an encoder's runs lack to speak to the throughput and scaling claims (empty: they can)."""
    config = entry["config"]
    gaps = ["tiny towers"] if config.get("model_size") != "paper" else []
    gaps += _off(config, ref["protocol"], "image_size", "px")
    if not str(config.get("resolved_device", "")).startswith("cuda"):
        gaps.append("measured on a CPU")
    return gaps + (["no benchmark.json"] if entry.get("benchmark") is None else [])


def _gaps(runs, encoders, rule, ref, absent) -> list[str]:
    """The towers without a finished run (and why), else what their runs lack by ``rule``, each gap once."""
    missing = [f"no finished {ENCODER_LABELS[e]} run" + (f" ({absent[e]})" if e in absent else "")
               for e in encoders if e not in runs]
    return missing or list(dict.fromkeys(g for e in encoders for g in rule(runs[e], ref)))


def _row(verdict: str, reason: str, **evidence: Any) -> dict[str, Any]:
    return {"verdict": verdict, "reason": reason, **evidence}


def _grade(real: bool, better: bool, gain: float, threshold: float) -> str:
    return "not supported" if not (real and better) else "supported" if gain >= threshold else "partly"


def judge_table1(claim, runs, gaps) -> dict[str, Any]:
    """A Table 1 metric or the loss: each seed's paired test and the seeds' spread (``stats.compare``); the
    relative gain is the claim's measure once the difference is real."""
    key = claim["metric"]
    result = stats.compare(key, runs["mambavision"]["runs"], runs["swin"]["runs"])
    gain = relative_change(result["mean_a"], result["mean_b"]) * (-1 if key in stats.LOWER_IS_BETTER else 1)
    evidence = dict(mvlip=result["mean_a"], mvlip_sd=result["sd_a"], swin=result["mean_b"], swin_sd=result["sd_b"],
                    **{k: result[k] for k in ("difference", "seeds", "found_in", "beyond_spread", "real")},
                    gain=gain if result["real"] else None, tests=result["tests"])
    if gaps:
        return _row("no verdict", "; ".join(gaps), **evidence)
    if not result["real"]:
        why = (f"the paired test finds a difference in {result['found_in']} of {result['seeds']} seeds"
               if result["found_in"] < result["seeds"] else "the seeds' means lie within their spread")
        return _row("not supported", f"no real difference: {why}", **evidence)
    return _row(_grade(True, result["better"], gain, claim["threshold"]),
                f"a real difference, {'in' if result['better'] else 'against'} the claimed direction", **evidence)


def _speed(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Gain of record a over record b in percent; real when at least MIN_SPEED_GAP_PERCENT and their spreads
    (``SPREAD`` of their kind) do not overlap."""
    if not a or not b or not a.get("images_per_s") or not b.get("images_per_s"):
        return None
    low, high = SPREAD[a["kind"]]
    gain = relative_change(a["images_per_s"], b["images_per_s"])
    overlap = (all(isinstance(r.get(k), (int, float)) for r in (a, b) for k in (low, high))
               and a[low] <= b[high] and b[low] <= a[high])
    return {"a": float(a["images_per_s"]), "b": float(b["images_per_s"]), "gain": gain,
            "real": math.isfinite(gain) and abs(gain) >= MIN_SPEED_GAP_PERCENT and not overlap}


def decoder_bound(entry: Mapping[str, Any]) -> dict[str, float] | None:
    """{jpeg, cache} images/s of a tower whose JPEG evaluation loop runs under DECODER_BOUND_SHARE of its loop
    from the uint8 cache (the same loop without decoding): that loop times the JPEG decoder, not the tower."""
    jpeg, cache = benchmark_record(entry, **LOOP), benchmark_record(entry, **CACHE)
    if not jpeg or not cache or not jpeg.get("images_per_s") or not cache.get("images_per_s"):
        return None
    bound = jpeg["images_per_s"] < DECODER_BOUND_SHARE * cache["images_per_s"]
    return {"jpeg": float(jpeg["images_per_s"]), "cache": float(cache["images_per_s"])} if bound else None


def judge_throughput(claim, runs, gaps) -> dict[str, Any]:
    """The paper's method (the whole evaluation loop, JPEG decoding) decides, unless it times the decoder for
    either tower: then the same loop from the uint8 cache decides. The towers alone stand beside."""
    pair = ("mambavision", claim["other"])
    if gaps:
        return _row("no verdict", "; ".join(gaps))
    loop, cache, alone = (_speed(*(benchmark_record(runs[e], **match) for e in pair)) for match in (LOOP, CACHE, ALONE))
    if loop is None:
        return _row("no verdict", "no measurement of the paper's method", alone=alone)
    bound = [e for e in pair if decoder_bound(runs[e])]
    by = cache if bound else loop
    found = ("a real difference" + ("" if by["gain"] > 0 or not bound else ", against the claimed direction")
             if by["real"] else "no real difference")
    reason = (f"the paper's method times the JPEG decoder for {' and '.join(ENCODER_LABELS[e] for e in bound)}; "
              "the loop from the uint8 cache finds " if bound else "the paper's method finds ") + found
    return _row(_grade(by["real"], by["gain"] > 0, by["gain"], claim["threshold"]), reason, loop=loop,
                **({"cache": cache} if bound else {}), alone=alone)


def growth_exponents(runs: Mapping[str, Any]) -> pd.DataFrame:
    """Per encoder with a resolution sweep: exponent b (cost ~ pixels^b) of measured time and counted FLOPs."""
    rows = []
    for encoder, entry in runs.items():
        frame = entry.get("benchmark")
        if frame is None or "kind" not in frame:
            continue
        sweep = frame[(frame["kind"] == "resolution_sweep") & frame["images_per_s"].notna()]
        if len(sweep) < 2:
            continue
        flops, top = sweep["flops_per_image"], sweep.loc[sweep["pixels"].idxmax()]
        rows.append({"encoder": encoder,
                     "measured": fit_growth_exponent(sweep["pixels"], sweep["seconds_per_image"]),
                     "counted": (fit_growth_exponent(sweep["pixels"], flops) if flops.notna().sum() >= 2
                                 else math.nan),
                     "smallest": int(sweep["resolution"].min()), "largest": int(top["resolution"]),
                     "ms_at_largest": float(top["seconds_per_image"]) * 1e3})
    return pd.DataFrame(rows)


def judge_scaling(claim, runs, gaps) -> dict[str, Any]:
    """Does MVLIP's cost grow more slowly than ViT's where their counted exponents differ?"""
    exps = growth_exponents(runs)
    if gaps or not {"mambavision", "vit"} <= set(exps.get("encoder", [])):
        return _row("no verdict", "; ".join(gaps) or "no resolution sweep")
    evidence = {"exponents": exps.to_dict(orient="records")}
    mv, vit = exps.set_index("encoder").loc[["mambavision", "vit"]].to_dict(orient="records")
    if not vit["counted"] - mv["counted"] >= EXPONENT_GAP:
        return _row("no verdict", f"in {int(mv['smallest'])}-{int(mv['largest'])} px their counted exponents do "
                    "not differ, so this range cannot test the claim", **evidence)
    slower = vit["measured"] - mv["measured"] >= EXPONENT_GAP
    faster = mv["ms_at_largest"] < vit["ms_at_largest"]
    verdict = "supported" if slower and faster else "partly" if slower else "not supported"
    reason = (f"MVLIP's measured cost grows {'more slowly' if slower else 'no more slowly'} than CLIP(ViT)'s, and "
              f"is {'lower' if faster else 'not lower'} at {int(mv['largest'])} px")
    return _row(verdict, reason, **evidence)


def judge_released(claim, runs, gaps) -> dict[str, Any]:
    """CLIP as released, fp16, before fine-tuning: supported when the paper's two-decimal number lies within
    our accuracy's exact interval."""
    fp16 = (runs["vit"]["runs"][0].get("before_training") or {}).get("fp16")
    if fp16 is None:
        return _row("no verdict", "no evaluation before training")
    n = int(fp16["n_val"])
    low, high = stats.proportion_interval(round(fp16["accuracy"] * n), n)
    evidence = dict(fp16=fp16["accuracy"], low=low, high=high)
    if gaps:
        return _row("no verdict", "; ".join(gaps), **evidence)
    paper = claim["threshold"]
    within = low <= paper + RELEASED_ROUNDING and paper - RELEASED_ROUNDING <= high
    return _row("supported" if within else "not supported",
                "the paper's number lies " + ("within" if within else "outside") + " our interval", **evidence)


JUDGES = {"table1": (judge_table1, ("mambavision", "swin"), accuracy_gaps),  # (judge, towers, what runs lack)
          "throughput": (judge_throughput, None, speed_gaps),  # MVLIP and claim["other"]
          "scaling": (judge_scaling, ("mambavision", "vit"), speed_gaps),
          "released": (judge_released, ("vit",), partial(accuracy_gaps, epochs=False))}


def judge(claim: Mapping[str, Any], runs: Mapping[str, Any], ref: Mapping[str, Any],
          absent: Mapping[str, str] | None = None) -> dict[str, Any]:
    """One claim's verdict from one edition's runs of the paper's towers (others are ignored): {verdict,
    reason, the evidence's values}; no verdict without a finished run of each tower the claim compares."""
    paper = {e: entry for e, entry in runs.items() if e in ENCODERS}
    rule, towers, lacks = JUDGES[claim["kind"]]
    towers = towers or ("mambavision", claim["other"])
    gaps = _gaps(paper, towers, lacks, ref, absent or {})
    if not set(towers) <= set(paper):
        return _row("no verdict", "; ".join(gaps))
    out = rule(claim, paper, gaps)
    assert out["verdict"] in VERDICTS, out
    return out


def _pm(mean: float, sd: float) -> str:
    return f"{mean:.4f}" if not math.isfinite(sd) else f"{mean:.4f} ± {sd:.4f}"


def _gain(measured: Mapping[str, Any]) -> str:
    return f", {measured['gain']:+.1f}%" if measured["real"] else ", no real difference"


def evidence_text(claim: Mapping[str, Any], row: Mapping[str, Any]) -> str:
    """The measurement behind a verdict, for a table cell; a percentage only where the difference is real."""
    if claim["kind"] == "table1" and "difference" in row:
        return f"{_pm(row['mvlip'], row['mvlip_sd'])} vs {_pm(row['swin'], row['swin_sd'])}" + _gain(row)
    if claim["kind"] == "throughput" and row.get("loop"):
        loop, cache, alone = row["loop"], row.get("cache"), row.get("alone")
        text = f"loop {loop['a']:.0f} vs {loop['b']:.0f} images/s" + (_gain(loop) if loop["real"] and not cache else "")
        if cache:
            text += f"; from the cache {cache['a']:.0f} vs {cache['b']:.0f}" + _gain(cache)
        if alone:
            text += f"; towers alone {alone['a']:.0f} vs {alone['b']:.0f}" + _gain(alone)
        return text
    if claim["kind"] == "scaling" and row.get("exponents"):
        return "; ".join(f"{TOWER_SHORT[r['encoder']]} b = {r['measured']:.2f} (counted {r['counted']:.2f})"
                         for r in row["exponents"])
    if claim["kind"] == "released" and row.get("fp16") is not None:
        return f"{row['fp16']:.4f} (interval {row['low']:.4f}-{row['high']:.4f})"
    return "–"


def read_editions(results_dir, profiles, encoders):
    """{profile: runs} and {profile: {encoder: what is not finished}} for each of ``profiles`` with a run folder."""
    from ..train.run_folder import load_edition

    editions, absent = {}, {}
    for profile in profiles:
        runs, unfinished = load_edition(results_dir, profile, encoders)
        if runs or any("missing" not in why for why in unfinished.values()):
            editions[profile], absent[profile] = runs, unfinished
    return editions, absent


def verdicts(editions: Mapping[str, Mapping[str, Any]], ref: Mapping[str, Any],
             absent: Mapping[str, Mapping[str, str]] | None = None) -> pd.DataFrame:
    """One row per (claim, edition): verdict, reason, the evidence as text and, in ``evidence``, the judge's row."""
    rows = []
    for claim in paper_claims(ref):
        for profile, runs in editions.items():
            row = judge(claim, runs, ref, (absent or {}).get(profile))
            rows.append({"claim id": claim["id"], "claim": claim["short"], "edition": profile,
                         "measured": evidence_text(claim, row), "verdict": row["verdict"], "reason": row["reason"],
                         "evidence": row})
    return pd.DataFrame(rows, columns=["claim id", "claim", "edition", "measured", "verdict", "reason", "evidence"])


def findings_table(detail: pd.DataFrame, ref: Mapping[str, Any]) -> pd.DataFrame:
    """One row per claim (``detail``: ``verdicts``'), ours from the last (most faithful) edition with a verdict."""
    rows = []
    for claim in paper_claims(ref):
        mine = detail[detail["claim id"] == claim["id"]]
        judged = mine[mine["verdict"] != "no verdict"]
        pick = (judged if len(judged) else mine).iloc[-1] if len(mine) else None
        rows.append({"claim": claim["claim"], "paper": claim["paper"],
                     "ours": "–" if pick is None else f"{pick['measured']} [{pick['edition']}]",
                     "verdict": "no verdict" if pick is None else pick["verdict"],
                     "reason": "no edition has a run" if pick is None else pick["reason"]})
    return pd.DataFrame(rows)


def table1_tests(detail: pd.DataFrame) -> pd.DataFrame:
    """Table 1's claims per edition and seed (``detail``: ``verdicts``'): each seed's paired test."""
    return pd.DataFrame([{"claim": item.claim, "edition": item.edition, "seed": int(test["seed"]),
                          "difference": test["difference"], "test": test["test"],
                          "p or 95% interval": (f"p = {test['p_value']:.3g}" if test["p_value"] is not None
                                                else f"{test['low']:+.4f} to {test['high']:+.4f}"),
                          "found": "yes" if test["significant"] else "no"}
                         for item in detail.itertuples() for test in item.evidence.get("tests", [])])


def seed_table(detail: pd.DataFrame) -> pd.DataFrame:
    """Table 1's claims over seeds (``detail``: ``verdicts``'): the towers' spread and the seeds' tests."""
    return pd.DataFrame([{"claim": item.claim, "edition": item.edition, "MVLIP": _pm(e["mvlip"], e["mvlip_sd"]),
                          "CLIP(Swin)": _pm(e["swin"], e["swin_sd"]), "found in": f"{e['found_in']} of {e['seeds']}",
                          "beyond spread": {True: "yes", False: "no", None: "one seed"}[e["beyond_spread"]],
                          "verdict": item.verdict}
                         for item in detail.itertuples() if "difference" in (e := item.evidence)])


def throughput_overview(runs: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per tower and condition for ``plots.throughput_by_condition`` (median and spread)."""
    conditions = [(ALONE, "alone, paper's conditions, inference"),
                  (ALONE | {"mode": "train"}, "alone, paper's conditions, training step"),
                  (LOOP, "paper's method, JPEG decoding"), (CACHE, "paper's method, uint8 cache")]
    measured = [(e, label, SPREAD[match["kind"]], benchmark_record(entry, **match))
                for e, entry in runs.items() if e in ENCODERS for match, label in conditions]
    return pd.DataFrame([{"tower": ENCODER_LABELS[e], "condition": label, "images/s": float(r["images_per_s"]),
                          "low": r.get(low), "high": r.get(high)}
                         for e, label, (low, high), r in measured if r is not None and pd.notna(r.get("images_per_s"))])


def counts(table: pd.DataFrame) -> dict[str, int]:
    """How many claims got each verdict."""
    return {v: int((table["verdict"] == v).sum()) for v in VERDICTS}


def same_class_captions(labels, batch_size: int, seed: int = 0) -> float:
    """Mean images per training batch whose class another image in the batch shares (its caption a false
    negative), over the first epoch of ``seed`` as the training loader draws it."""
    import torch

    from ..data.folders import make_loader

    loader = make_loader(torch.as_tensor(np.asarray(labels)), batch_size, shuffle=True, drop_last=True,
                         seed=seed * 1000 + 1)
    return float(np.mean([pd.Series(batch.numpy()).duplicated(keep=False).sum() for batch in loader]))
