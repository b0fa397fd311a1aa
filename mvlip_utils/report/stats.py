"""Two towers compared on the same images, seed by seed, and over seeds: McNemar's exact test for accuracy, a
paired bootstrap interval for the other metrics and the loss, and the rule that calls a difference real (``compare``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05            # a paired test finds a difference when p < ALPHA, or its 1 - ALPHA interval excludes 0
SPREAD_FACTOR = 2.0     # several seeds: the difference of the seed means must exceed this many seed SDs
N_RESAMPLES = 999       # bootstrap resamples of the images
LOWER_IS_BETTER = ("zeroshot_loss",)


def mcnemar(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> dict[str, Any]:
    """McNemar's exact test: ``binomtest`` of the discordant images against 1/2; ``difference``: accuracy a - b."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    p = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"test": "McNemar exact", "difference": (only_a - only_b) / len(a), "p_value": float(p),
            "low": None, "high": None, "only_a": only_a, "only_b": only_b}


def paired_bootstrap(statistic, data: Sequence[np.ndarray]) -> dict[str, Any]:
    """``statistic(*data)`` (vectorized) and its percentile interval, ``scipy.stats.bootstrap(paired=True)``."""
    result = stats.bootstrap(tuple(data), statistic, paired=True, vectorized=True, n_resamples=N_RESAMPLES,
                             confidence_level=1 - ALPHA, method="percentile", random_state=0)
    low, high = result.confidence_interval
    return {"test": "paired bootstrap", "difference": float(np.squeeze(statistic(*data))), "p_value": None,
            "low": float(low), "high": float(high)}


def label_scores(labels: np.ndarray, predictions: np.ndarray, key: str) -> np.ndarray:
    """scikit-learn's precision or F1 (weighted or macro, zero_division=0, over the classes in labels or
    predictions) of every row of 2-D ``labels`` and ``predictions`` at once: the bootstrap's statistic."""
    labels, predictions = np.atleast_2d(labels), np.atleast_2d(predictions)
    rows, classes = labels.shape[0], int(max(labels.max(), predictions.max())) + 1
    offset = (np.arange(rows) * classes)[:, None]

    def count(index, where=None):
        index = (index + offset)[where] if where is not None else (index + offset).ravel()
        return np.bincount(index, minlength=rows * classes).reshape(rows, classes).astype(float)

    support, predicted = count(labels), count(predictions)
    hits = count(labels, labels == predictions)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        f1 = np.where(support + predicted > 0, 2 * hits / (support + predicted), 0.0)
    score = precision if key.startswith("precision") else f1
    if key.endswith("weighted"):
        return (score * support).sum(axis=1) / support.sum(axis=1)
    present = (support + predicted) > 0
    return (score * present).sum(axis=1) / present.sum(axis=1)


def paired_test(key: str, a: pd.DataFrame, b: pd.DataFrame) -> dict[str, Any]:
    """Metric ``key`` of tower a minus b on the same images (per-image frames), its test and ``significant``."""
    if len(a) != len(b) or not np.array_equal(a["label"].to_numpy(), b["label"].to_numpy()):
        raise ValueError("the two runs were not evaluated on the same images (their per-image labels differ)")
    labels = a["label"].to_numpy()
    if key == "accuracy":
        out = mcnemar(a["correct"], b["correct"])
    elif key == "zeroshot_loss":
        out = paired_bootstrap(lambda d, axis=-1: np.mean(d, axis=axis), [a["loss"].to_numpy() - b["loss"].to_numpy()])
    else:
        out = paired_bootstrap(lambda y, pa, pb, axis=-1: label_scores(y, pa, key) - label_scores(y, pb, key),
                               [labels, a["prediction"].to_numpy(), b["prediction"].to_numpy()])
    out["significant"] = (out["p_value"] < ALPHA if out["p_value"] is not None
                          else not out["low"] <= 0 <= out["high"])
    return out


def seed_spread(values_a: Sequence[float], values_b: Sequence[float]) -> dict[str, Any]:
    """Each tower's mean and SD (ddof 1) over seeds; whether the means differ by more than SPREAD_FACTOR times
    the larger SD (None with fewer than two seeds)."""
    a, b = np.asarray(values_a, dtype=float), np.asarray(values_b, dtype=float)
    sd_a, sd_b = (float(np.std(x, ddof=1)) if len(x) > 1 else math.nan for x in (a, b))
    beyond = None if min(len(a), len(b)) < 2 else bool(abs(a.mean() - b.mean()) > SPREAD_FACTOR * max(sd_a, sd_b))
    return {"mean_a": float(a.mean()), "sd_a": sd_a, "mean_b": float(b.mean()), "sd_b": sd_b, "seeds": len(a),
            "beyond_spread": beyond}


def compare(key: str, runs_a: Sequence[Mapping[str, Any]], runs_b: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Metric ``key`` of two towers over their common seeds: each seed's paired test and the spread. ``real``:
    every seed's test finds a difference of one sign and, with 2+ seeds, the means differ beyond the spread.
    ``difference``: mean per-seed difference (a - b); ``better``: it favours tower a."""
    by_seed = {r["seed"]: r for r in runs_b}
    pairs = [(r, by_seed[r["seed"]]) for r in runs_a if r["seed"] in by_seed]
    if not pairs:
        raise ValueError("the two towers have no seed in common")
    tests = [paired_test(key, ra["per_image"], rb["per_image"]) | {"seed": ra["seed"]} for ra, rb in pairs]
    spread = seed_spread([ra["metrics"][key] for ra, _ in pairs], [rb["metrics"][key] for _, rb in pairs])
    signs = {np.sign(t["difference"]) for t in tests}
    found = sum(t["significant"] for t in tests)
    real = found == len(tests) and len(signs) == 1 and spread["beyond_spread"] is not False
    difference = float(np.mean([t["difference"] for t in tests]))
    better = difference < 0 if key in LOWER_IS_BETTER else difference > 0
    return {"tests": tests, **spread, "difference": difference, "found_in": found, "real": real,
            "better": better}


def above_chance(correct: Sequence[bool], n_classes: int) -> dict[str, Any]:
    """Whether an accuracy is above a uniform guess's 1/n_classes: a one-sided ``binomtest``."""
    correct = np.asarray(correct, dtype=bool)
    p = stats.binomtest(int(correct.sum()), len(correct), 1 / n_classes, alternative="greater").pvalue
    return {"accuracy": float(correct.mean()), "chance": 1 / n_classes, "p_value": float(p), "above": bool(p < ALPHA)}


def proportion_interval(successes: int, n: int) -> tuple[float, float]:
    """The exact (Clopper-Pearson) 1 - ALPHA interval of a proportion."""
    ci = stats.binomtest(int(successes), int(n)).proportion_ci(confidence_level=1 - ALPHA, method="exact")
    return float(ci.low), float(ci.high)
