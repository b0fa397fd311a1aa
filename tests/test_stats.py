"""report.stats: McNemar's exact test, the paired bootstrap, scikit-learn's label scores over resamples, the
seeds' spread, the rule that calls a difference real, and the tests against chance."""

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import precision_recall_fscore_support

from mvlip_utils.report import stats

KEYS = ("precision_weighted", "f1_weighted", "precision_macro", "f1_macro")


def sklearn_score(labels, predictions, key):
    metric, average = key.split("_")
    precision, _, f1, _ = precision_recall_fscore_support(labels, predictions, average=average, zero_division=0)
    return precision if metric == "precision" else f1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_scores_equal_scikit_learns_on_every_resample_at_once(seed):
    rng = np.random.default_rng(seed)
    rows, n, classes = 6, 150, 9
    labels = rng.integers(0, classes - 1, size=(rows, n))          # class 8 never a label ...
    right = rng.random((rows, n)) < 0.4
    predictions = np.where(right, labels, rng.integers(0, classes, size=(rows, n)))  # ... but predicted
    predictions[:, 0] = 0  # class 0 is predicted in every row
    for key in KEYS:
        ours = stats.label_scores(labels, predictions, key)
        assert ours.shape == (rows,)
        expected = [sklearn_score(labels[r], predictions[r], key) for r in range(rows)]
        np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12, err_msg=key)
    # one row (1-D arrays) is one score
    one = stats.label_scores(labels[0], predictions[0], "f1_weighted")
    assert one.shape == (1,) and one[0] == pytest.approx(sklearn_score(labels[0], predictions[0], "f1_weighted"))


def test_label_scores_of_a_class_never_predicted_count_zero_as_scikit_learn_does():
    labels = np.array([0, 0, 1, 1, 2, 2])
    predictions = np.array([0, 0, 0, 1, 1, 1])  # class 2 never predicted: its precision is 0 (zero_division=0)
    for key in KEYS:
        assert stats.label_scores(labels, predictions, key)[0] == pytest.approx(sklearn_score(labels, predictions, key))


def test_mcnemar_counts_the_discordant_images_only():
    a = np.array([True] * 2667 + [True] * 20 + [False] * 1236)   # right on 20 more images than b
    b = np.array([True] * 2667 + [False] * 20 + [False] * 1236)
    out = stats.mcnemar(a, b)
    assert (out["only_a"], out["only_b"]) == (20, 0)
    assert out["p_value"] == pytest.approx(2 * 0.5 ** 20)  # all 20 discordant pairs one way
    assert out["difference"] == pytest.approx(20 / 3923)
    swapped = stats.mcnemar(b, a)
    assert swapped["difference"] == pytest.approx(-20 / 3923) and swapped["p_value"] == out["p_value"]
    # images both get right or both wrong say nothing: the same test whatever their number
    assert stats.mcnemar(a[2667:], b[2667:])["p_value"] == out["p_value"]
    balanced = stats.mcnemar([True] * 10 + [False] * 10, [False] * 10 + [True] * 10)
    assert balanced["difference"] == 0 and balanced["p_value"] == pytest.approx(1.0)
    assert stats.mcnemar([True, False], [True, False])["p_value"] == 1.0  # no discordant pair at all


def frame(labels, predictions, loss):
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return pd.DataFrame({"label": labels, "prediction": predictions, "correct": labels == predictions,
                         "loss": np.asarray(loss, dtype=float)})


def test_the_paired_bootstrap_sees_a_small_constant_gap_that_the_images_spread_hides():
    rng = np.random.default_rng(3)
    labels = np.arange(400) % 4
    losses = rng.gamma(2.0, 1.0, size=400)  # spread over images of about 1.4
    a, b = frame(labels, labels, losses - 0.01), frame(labels, labels, losses)
    out = stats.paired_test("zeroshot_loss", a, b)
    assert out["test"] == "paired bootstrap" and out["p_value"] is None
    assert out["difference"] == pytest.approx(-0.01)
    assert out["low"] == pytest.approx(-0.01) and out["high"] == pytest.approx(-0.01) and out["significant"]
    # the same gap in towers scored on different images (independent samples) is far inside their spread
    assert 2 * math.sqrt(2 * losses.var(ddof=1) / len(losses)) > 10 * 0.01
    noisy = frame(labels, labels, losses + rng.normal(0, 1.0, size=400))
    out = stats.paired_test("zeroshot_loss", noisy, b)
    assert out["low"] < 0 < out["high"] and not out["significant"]
    assert out["low"] <= out["difference"] <= out["high"]


def test_paired_tests_of_the_label_scores_and_their_refusal_of_other_images():
    labels = np.arange(300) % 10
    wrong = (labels + 1) % 10
    base = np.where(np.arange(300) < 150, labels, wrong)
    better = np.where(np.arange(300) < 200, labels, wrong)  # right on 50 more images
    a, b = frame(labels, better, np.ones(300)), frame(labels, base, np.ones(300))
    for key in ("precision_weighted", "f1_weighted"):
        out = stats.paired_test(key, a, b)
        expected = sklearn_score(labels, better, key) - sklearn_score(labels, base, key)
        assert out["difference"] == pytest.approx(expected) and expected > 0
        assert out["low"] > 0 and out["significant"]
    accuracy = stats.paired_test("accuracy", a, b)
    assert accuracy["test"] == "McNemar exact" and accuracy["significant"] and accuracy["difference"] == pytest.approx(50 / 300)
    with pytest.raises(ValueError, match="same images"):
        stats.paired_test("accuracy", a, frame(np.roll(labels, 1), base, np.ones(300)))
    with pytest.raises(ValueError, match="same images"):
        stats.paired_test("accuracy", a, b.iloc[:-1])


def test_seed_spread_sets_the_difference_of_the_means_against_the_larger_sd():
    wide = stats.seed_spread([0.70, 0.71, 0.72], [0.60, 0.61, 0.62])
    assert wide["sd_a"] == pytest.approx(0.01) and wide["mean_b"] == pytest.approx(0.61)
    assert wide["beyond_spread"] is True and wide["seeds"] == 3
    # 0.01 apart against an SD of 0.01: inside SPREAD_FACTOR (2) SDs
    assert stats.seed_spread([0.70, 0.71, 0.72], [0.69, 0.70, 0.71])["beyond_spread"] is False
    # the larger SD counts: b's seeds spread widely
    assert stats.seed_spread([0.70, 0.70, 0.70], [0.50, 0.60, 0.70])["beyond_spread"] is False
    one = stats.seed_spread([0.7], [0.6])
    assert one["beyond_spread"] is None and math.isnan(one["sd_a"]) and one["mean_a"] == 0.7


def runs_of(correct_by_seed, n=200):
    """Runs as ``run_folder.load_edition`` gives them: per seed, metrics and per-image results."""
    labels = np.arange(n) % 4
    out = []
    for seed, correct in correct_by_seed.items():
        right = np.arange(n) < correct
        predictions = np.where(right, labels, (labels + 1) % 4)
        out.append({"seed": seed, "metrics": {"accuracy": right.mean(), "zeroshot_loss": 1.0},
                    "per_image": frame(labels, predictions, np.ones(n))})
    return out


def test_compare_pairs_the_seeds_both_towers_have():
    a = runs_of({0: 150, 1: 151, 2: 152})
    b = runs_of({1: 100, 2: 101, 5: 100})
    result = stats.compare("accuracy", a, b)
    assert [t["seed"] for t in result["tests"]] == [1, 2] and result["seeds"] == 2
    assert result["real"] and result["better"] and result["found_in"] == 2
    assert result["difference"] == pytest.approx(51 / 200)
    with pytest.raises(ValueError, match="no seed in common"):
        stats.compare("accuracy", runs_of({0: 150}), runs_of({1: 150}))
    # a lower loss is the better one
    low = runs_of({0: 150})
    low[0]["per_image"]["loss"] = 0.5
    high = runs_of({0: 150})
    high[0]["per_image"]["loss"] = np.linspace(0.9, 1.1, 200)
    assert stats.compare("zeroshot_loss", low, high)["better"] is True
    assert stats.compare("zeroshot_loss", high, low)["better"] is False


def test_compare_wants_every_seed_and_the_same_sign():
    # seed 1 finds the difference the other way: not real, though every seed's test finds one
    mixed = stats.compare("accuracy", runs_of({0: 150, 1: 100}), runs_of({0: 100, 1: 150}))
    assert mixed["found_in"] == 2 and not mixed["real"]
    # one seed's test finds nothing: not real
    partial = stats.compare("accuracy", runs_of({0: 150, 1: 101}), runs_of({0: 100, 1: 100}))
    assert partial["found_in"] == 1 and not partial["real"]
    # one seed alone: its test decides (no spread to compare with)
    single = stats.compare("accuracy", runs_of({0: 150}), runs_of({0: 100}))
    assert single["real"] and single["beyond_spread"] is None


def test_above_chance_is_a_one_sided_binomial_test_against_a_uniform_guess():
    # 1,000 classes and 3,000 images: a guess expects 3 right; 8 right is above chance (p 0.012), 6 is not (0.084)
    def correct(k):
        return np.arange(3000) < k

    assert stats.above_chance(correct(8), 1000)["above"] is True
    low = stats.above_chance(correct(6), 1000)
    assert low["above"] is False and low["p_value"] == pytest.approx(0.0838, abs=1e-3)
    assert low["chance"] == 1 / 1000 and low["accuracy"] == pytest.approx(0.002)
    assert stats.above_chance(correct(0), 1000)["p_value"] == 1.0


def test_proportion_interval_is_the_exact_interval():
    low, high = stats.proportion_interval(2313, 3923)  # 0.5896
    assert low == pytest.approx(0.5740, abs=2e-4) and high == pytest.approx(0.6050, abs=2e-4)
    assert stats.proportion_interval(0, 100)[0] == 0.0 and stats.proportion_interval(100, 100)[1] == 1.0
