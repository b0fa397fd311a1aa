"""The verdicts on the paper's claims (report.findings), checked on MADE runs whose answer is known: no training,
runs shaped like ``run_folder.load_edition``'s entries (metrics, a configuration meeting the paper's
conditions, per-image results) built so that the towers differ, or not, exactly as each case needs."""

import math

import numpy as np
import pandas as pd
import pytest

from mvlip_utils.data.files import write_csv, write_json
from mvlip_utils.measure.benchmark_suite import PAPER
from mvlip_utils.report import findings, stats, tables
from mvlip_utils.settings.paper import paper_reference

REF = paper_reference()
N, CLASSES = 3923, 1000                    # ImageNet-mini's validation images and classes
PAPER_CONDITIONS = dict(model_size="paper", pretrained=True, data="data/imagenet-mini", n_classes=1000,
                        image_size=224, epochs=20, resolved_device="cuda", device_name="NVIDIA H200")


def right_on(k: int, n: int = N) -> np.ndarray:
    """A tower right on the first ``k`` of ``n`` validation images, wrong on the rest."""
    return np.arange(n) < k


def made_run(encoder: str, seed: int, right: np.ndarray, loss=None, **config) -> dict:
    """One finished run as ``run_folder.load_run`` gives it: wrong images predicted as the next class."""
    n = len(right)
    labels = np.arange(n) % CLASSES
    predictions = np.where(right, labels, (labels + 1) % CLASSES)
    loss = np.where(right, 0.5, 2.0) if loss is None else np.asarray(loss, dtype=float)
    images = pd.DataFrame({"image": [f"val/{i}.JPEG" for i in range(n)], "label": labels, "prediction": predictions,
                           "correct": right, "top5_correct": right, "loss": loss})
    metrics = {key: float(stats.label_scores(labels, predictions, key)[0]) for key in ("precision_weighted",
                                                                                         "f1_weighted")}
    metrics.update(accuracy=float(right.mean()), zeroshot_loss=float(loss.mean()), n_val=n, n_classes=CLASSES)
    return {"seed": seed, "config": {**PAPER_CONDITIONS, "encoder": encoder, "seed": seed, **config},
            "metrics": metrics, "per_image": images, "before_training": None}


def made_entry(encoder: str, runs: list, benchmark: pd.DataFrame | None = None) -> dict:
    return {"encoder": encoder, "runs": runs, "config": runs[0]["config"], "benchmark": benchmark}


def table1_runs(swin_right: dict, extra_right: int, n: int = N, **config) -> dict:
    """MVLIP and CLIP(Swin) per seed on ``n`` images: Swin right on its first swin_right[seed] images, MVLIP on
    those and ``extra_right`` more (the two agree on every other image)."""
    return {"mambavision": made_entry("mambavision", [made_run("mambavision", s, right_on(k + extra_right, n), **config)
                                                      for s, k in swin_right.items()]),
            "swin": made_entry("swin", [made_run("swin", s, right_on(k, n), **config) for s, k in swin_right.items()])}


def claim(claim_id: str) -> dict:
    return next(c for c in findings.paper_claims(REF) if c["id"] == claim_id)


# ---------------------------------------------------------------------------------------- the claims
def test_the_claims_and_their_numbers_come_from_the_paper_tables():
    claims = {c["id"]: c for c in findings.paper_claims(REF)}
    assert list(claims) == ["accuracy", "precision_weighted", "f1_weighted", "val_loss", "throughput_vit",
                            "throughput_swin", "scaling", "clip_released"]
    assert claims["accuracy"]["paper"] == "+9.83% (0.7466 vs 0.6798)" and claims["accuracy"]["threshold"] == 9
    assert claims["f1_weighted"]["paper"].startswith("+10.02%")
    assert claims["val_loss"]["paper"].startswith("37.0% lower") and claims["val_loss"]["threshold"] == 37
    assert claims["throughput_vit"]["threshold"] == 33 and claims["throughput_swin"]["threshold"] == 41
    assert claims["clip_released"]["threshold"] == 0.59 and claims["clip_released"]["paper"] == "0.59"
    assert len({c["short"] for c in claims.values()}) == len(claims)  # each claim named once


# ------------------------------------------------------------------------- Table 1: three known answers
def test_a_real_paired_difference_that_an_unpaired_rule_misses():
    """3,923 images; the towers agree on all but 20, which MVLIP gets right, in each of three seeds."""
    runs = table1_runs({0: 2667, 1: 2668, 2: 2666}, extra_right=20)
    first = stats.mcnemar(runs["mambavision"]["runs"][0]["per_image"]["correct"],
                          runs["swin"]["runs"][0]["per_image"]["correct"])
    assert first["p_value"] < 1e-5  # McNemar: 20 discordant images, all one way
    a, b = (2667 + 20) / N, 2667 / N
    gap = a - b
    unpaired = 2 * math.sqrt(a * (1 - a) / N + b * (1 - b) / N)  # two SEs, as if independent samples
    assert unpaired > gap and unpaired > 4 * gap  # an unpaired rule calls this no difference

    out = findings.judge(claim("accuracy"), runs, REF)
    assert out["real"] and out["found_in"] == out["seeds"] == 3 and out["beyond_spread"] is True
    assert out["difference"] == pytest.approx(20 / N)
    # real, in the claimed direction, but 0.75% against the claimed 9-10%: partly
    assert out["verdict"] == "partly" and out["gain"] == pytest.approx(20 / 2667 * 100, rel=1e-3)
    assert out["reason"] == "a real difference, in the claimed direction"
    assert findings.evidence_text(claim("accuracy"), out).endswith(", +0.7%")
    # the same 20 images the other way round: real, against the claim
    against = findings.judge(claim("accuracy"), table1_runs({0: 2687, 1: 2688, 2: 2686}, extra_right=-20), REF)
    assert against["verdict"] == "not supported" and against["reason"] == "a real difference, against the claimed direction"
    # as large as claimed: 300 more images of 2,667 is +11.2%
    supported = findings.judge(claim("accuracy"), table1_runs({0: 2667, 1: 2668, 2: 2666}, extra_right=300), REF)
    assert supported["verdict"] == "supported" and supported["gain"] >= claim("accuracy")["threshold"]


def test_no_difference_is_no_real_difference():
    """The towers disagree on 40 images per seed, 20 each way: the same accuracy, nothing found."""
    swin = right_on(2667)
    mv = swin.copy()
    mv[3000:3020] = True   # MVLIP right where Swin is wrong ...
    mv[0:20] = False       # ... and wrong where Swin is right
    runs = {"mambavision": made_entry("mambavision", [made_run("mambavision", s, mv) for s in range(3)]),
            "swin": made_entry("swin", [made_run("swin", s, swin) for s in range(3)])}
    out = findings.judge(claim("accuracy"), runs, REF)
    assert out["difference"] == 0 and out["found_in"] == 0 and not out["real"] and out["gain"] is None
    assert out["verdict"] == "not supported"
    assert out["reason"] == "no real difference: the paired test finds a difference in 0 of 3 seeds"
    text = findings.evidence_text(claim("accuracy"), out)
    assert text.endswith("no real difference") and "%" not in text  # no percentage of a difference not found


def test_a_difference_inside_the_seed_spread_is_not_real():
    """Every seed's paired test finds MVLIP ahead by 30 images, but the seeds themselves move the accuracy
    by 300 images: the seed means lie within two seed SDs of each other."""
    runs = table1_runs({0: 2400, 1: 2700, 2: 3000}, extra_right=30)
    out = findings.judge(claim("accuracy"), runs, REF)
    assert out["found_in"] == 3 and all(t["p_value"] < 1e-6 for t in out["tests"])
    assert abs(out["mvlip"] - out["swin"]) < stats.SPREAD_FACTOR * max(out["mvlip_sd"], out["swin_sd"])
    assert out["beyond_spread"] is False and not out["real"]
    assert out["verdict"] == "not supported"
    assert out["reason"] == "no real difference: the seeds' means lie within their spread"


def test_precision_f1_and_the_loss_are_judged_by_the_paired_bootstrap():
    runs = table1_runs({0: 680, 1: 681}, extra_right=100, n=1000)
    for key in ("precision_weighted", "f1_weighted"):
        out = findings.judge(claim(key), runs, REF)
        assert [t["test"] for t in out["tests"]] == ["paired bootstrap"] * 2
        assert all(t["low"] > 0 for t in out["tests"]) and out["real"]
        assert out["mvlip"] == pytest.approx(np.mean([r["metrics"][key] for r in runs["mambavision"]["runs"]]))
    # the loss: lower is better; 40% lower on every image is at least the claimed 37%, 20% lower is partly
    rng = np.random.default_rng(0)
    base = {s: rng.gamma(4.0, 0.5, size=1000) for s in (0, 1)}
    for factor, verdict in ((0.6, "supported"), (0.8, "partly"), (1.1, "not supported")):
        runs = {"mambavision": made_entry("mambavision", [made_run("mambavision", s, right_on(680, 1000), base[s] * factor)
                                                          for s in base]),
                "swin": made_entry("swin", [made_run("swin", s, right_on(680, 1000), base[s]) for s in base])}
        out = findings.judge(claim("val_loss"), runs, REF)
        assert out["verdict"] == verdict, (factor, out["reason"])
        if factor < 1:
            assert out["gain"] == pytest.approx((1 - factor) * 100)


def test_table1_needs_the_papers_conditions_and_says_which_are_missing():
    runs = table1_runs({0: 2667}, extra_right=300, model_size="smoke", pretrained=False, data="generated",
                       n_classes=10, image_size=64, epochs=6)
    out = findings.judge(claim("accuracy"), runs, REF)
    assert out["verdict"] == "no verdict" and out["real"]  # the evidence is still computed and shown
    assert out["reason"] == ("tiny towers; random weights; generated data; 10 classes, not 1000; 64 px, not 224; "
                             "6 epochs, not 20")
    # a tower without a finished run: its reason names it and what is not finished
    del runs["swin"]
    out = findings.judge(claim("val_loss"), runs, REF, {"swin": "seed 0: partial (1 of 20 epochs)"})
    assert out == {"verdict": "no verdict", "reason": "no finished CLIP(Swin) run (seed 0: partial (1 of 20 epochs))"}


def test_an_encoder_beyond_the_paper_never_changes_a_verdict():
    runs = table1_runs({0: 680, 1: 681}, extra_right=100, n=1000)
    alone = findings.judge(claim("accuracy"), runs, REF)
    extra = {**runs, "convnext_atto": made_entry("convnext_atto", runs["swin"]["runs"])}
    beside = findings.judge(claim("accuracy"), extra, REF, {"convnext_atto": "seed 1: missing"})
    assert beside["verdict"] == alone["verdict"] == "supported" and beside["reason"] == alone["reason"]


# ------------------------------------------------------------------------------------------- throughput
def bench_frame(loop=None, alone=None, loop_spread=0.01, alone_spread=0.01, sweep=None, cache=None) -> pd.DataFrame:
    rows = []
    for source, rate in (("jpeg", loop), ("uint8_cache", cache)):
        if rate:
            rows.append({"kind": "eval_loop", "source": source, "num_workers": 4, "images_per_s": rate,
                         "images_per_s_min": rate * (1 - loop_spread), "images_per_s_max": rate * (1 + loop_spread)})
    if alone:
        rows.append({"kind": "model_only", "setting": PAPER, "mode": "inference", "images_per_s": alone,
                     "images_per_s_p10": alone * (1 - alone_spread), "images_per_s_p90": alone * (1 + alone_spread)})
    for resolution, (ms, gflops) in (sweep or {}).items():
        rows.append({"kind": "resolution_sweep", "resolution": resolution, "pixels": resolution ** 2,
                     "images_per_s": 1e3 / ms, "seconds_per_image": ms / 1e3, "flops_per_image": gflops * 1e9})
    return pd.DataFrame(rows)


def speed_runs(**benchmarks) -> dict:
    """Paper-size towers with random weights on a GPU (the speed edition), one run each."""
    return {e: made_entry(e, [made_run(e, 0, right_on(4), pretrained=False, data="generated-imagenet", epochs=2)],
                          frame) for e, frame in benchmarks.items()}


def test_throughput_follows_the_papers_method_with_the_towers_alone_beside_it():
    # the loop (JPEG decoding) finds MVLIP 40% faster; the towers alone find it three times slower
    runs = speed_runs(mambavision=bench_frame(loop=630, alone=1000), vit=bench_frame(loop=450, alone=3000))
    out = findings.judge(claim("throughput_vit"), runs, REF)
    assert out["loop"]["gain"] == pytest.approx(40.0) and out["loop"]["real"]
    assert out["alone"]["gain"] == pytest.approx(-66.67, abs=0.01) and out["alone"]["real"]
    assert out["verdict"] == "supported" and out["reason"] == "the paper's method finds a real difference"
    assert findings.evidence_text(claim("throughput_vit"), out) == (
        "loop 630 vs 450 images/s, +40.0%; towers alone 1000 vs 3000, -66.7%")
    # the loop finds no difference (under the 3% floor) whatever the towers alone say
    runs["vit"] = speed_runs(vit=bench_frame(loop=620, alone=3000))["vit"]
    out = findings.judge(claim("throughput_vit"), runs, REF)
    assert abs(out["loop"]["gain"]) < findings.MIN_SPEED_GAP_PERCENT and not out["loop"]["real"]
    assert out["verdict"] == "not supported" and out["reason"] == "the paper's method finds no real difference"
    assert "%" not in findings.evidence_text(claim("throughput_vit"), out).split(";")[0]
    # above the floor but the passes overlap: no real difference either
    runs["vit"] = speed_runs(vit=bench_frame(loop=580, alone=3000, loop_spread=0.1))["vit"]
    assert findings.judge(claim("throughput_vit"), runs, REF)["verdict"] == "not supported"
    # a real gain smaller than claimed: partly
    runs["vit"] = speed_runs(vit=bench_frame(loop=560, alone=3000))["vit"]
    assert findings.judge(claim("throughput_vit"), runs, REF)["verdict"] == "partly"
    # no measurement of the paper's method: no verdict, the towers alone still shown
    runs = speed_runs(mambavision=bench_frame(alone=1000), swin=bench_frame(alone=900))
    out = findings.judge(claim("throughput_swin"), runs, REF)
    assert out["verdict"] == "no verdict" and out["reason"] == "no measurement of the paper's method"
    assert out["alone"]["gain"] == pytest.approx(100 / 9) and out["alone"]["real"]


def test_a_loop_that_times_the_jpeg_decoder_leaves_the_verdict_to_the_loop_from_the_cache():
    # the speed edition's numbers: CLIP(ViT)'s JPEG loop runs at 28% of its loop from the cache
    runs = speed_runs(mambavision=bench_frame(loop=803, cache=1146, alone=1462),
                      vit=bench_frame(loop=572, cache=2059, alone=3377),
                      swin=bench_frame(loop=521, cache=696, alone=920))
    assert findings.decoder_bound(runs["vit"]) == {"jpeg": 572, "cache": 2059}
    assert findings.decoder_bound(runs["mambavision"]) is None  # 70%, over two thirds
    out = findings.judge(claim("throughput_vit"), runs, REF)
    assert out["loop"]["real"] and out["loop"]["gain"] > 0 and out["cache"]["gain"] == pytest.approx(-44.34, abs=0.01)
    assert out["verdict"] == "not supported"
    assert out["reason"] == ("the paper's method times the JPEG decoder for CLIP(ViT); the loop from the uint8 "
                             "cache finds a real difference, against the claimed direction")
    assert findings.evidence_text(claim("throughput_vit"), out) == (
        "loop 803 vs 572 images/s; from the cache 1146 vs 2059, -44.3%; towers alone 1462 vs 3377, -56.7%")
    # neither loop decoder-bound: the paper's method decides as before
    out = findings.judge(claim("throughput_swin"), runs, REF)
    assert "cache" not in out and out["verdict"] == "supported"
    # Table 2 gives no percentage from a decoder-bound loop
    table = tables.table2(runs, REF)
    assert table.loc["MVLIP", "paper's method: vs CLIP(ViT)"] == "decoder-bound"
    assert table.loc["MVLIP", "towers alone: vs CLIP(ViT)"] == "-56.7%"


def test_throughput_needs_paper_size_towers_on_a_gpu():
    runs = speed_runs(mambavision=bench_frame(loop=630, alone=1000), vit=None)
    out = findings.judge(claim("throughput_vit"), runs, REF)
    assert out == {"verdict": "no verdict", "reason": "no benchmark.json"}
    cpu = {e: made_entry(e, [made_run(e, 0, right_on(4), model_size="smoke", image_size=64,
                                      resolved_device="cpu")], bench_frame(loop=100, alone=100))
           for e in ("mambavision", "vit")}
    out = findings.judge(claim("throughput_vit"), cpu, REF)
    assert out["verdict"] == "no verdict" and out["reason"] == "tiny towers; 64 px, not 224; measured on a CPU"


# ----------------------------------------------------------------------------------------------- scaling
LINEAR = {224: (1.0, 10.0), 448: (4.0, 40.0), 896: (16.0, 160.0)}       # time and FLOPs ~ pixels^1
QUADRATIC = {224: (0.5, 4.0), 448: (8.0, 64.0), 896: (128.0, 1024.0)}  # ~ pixels^2


def test_scaling_is_not_judged_where_the_counted_exponents_do_not_differ():
    # measured: ViT grows quadratically, MambaVision linearly; but the counted FLOPs grow alike (both linear)
    vit_counted_linear = {r: (ms, LINEAR[r][1]) for r, (ms, _) in QUADRATIC.items()}
    runs = speed_runs(mambavision=bench_frame(loop=600, alone=900, sweep=LINEAR),
                      vit=bench_frame(loop=600, alone=3000, sweep=vit_counted_linear))
    out = findings.judge(claim("scaling"), runs, REF)
    assert out["verdict"] == "no verdict"
    assert out["reason"] == "in 224-896 px their counted exponents do not differ, so this range cannot test the claim"
    exps = {r["encoder"]: r for r in out["exponents"]}
    assert exps["vit"]["measured"] == pytest.approx(2.0) and exps["vit"]["counted"] == pytest.approx(1.0)
    assert findings.evidence_text(claim("scaling"), out) == (
        "MambaVision b = 1.00 (counted 1.00); ViT b = 2.00 (counted 1.00)")


def test_scaling_where_the_counted_exponents_differ_is_judged_on_the_measured_ones():
    runs = speed_runs(mambavision=bench_frame(loop=600, alone=900, sweep=LINEAR),
                      vit=bench_frame(loop=600, alone=3000, sweep=QUADRATIC))
    out = findings.judge(claim("scaling"), runs, REF)
    assert out["verdict"] == "supported"  # grows more slowly, and 16 ms against 128 ms at 896 px
    assert out["reason"] == "MVLIP's measured cost grows more slowly than CLIP(ViT)'s, and is lower at 896 px"
    # grows more slowly but is still slower at the largest resolution measured: partly
    slow_mv = {r: (ms * 20, f) for r, (ms, f) in LINEAR.items()}
    runs["mambavision"] = speed_runs(mambavision=bench_frame(loop=600, alone=900, sweep=slow_mv))["mambavision"]
    assert findings.judge(claim("scaling"), runs, REF)["verdict"] == "partly"
    # the counted exponents differ, the measured ones do not (the GPU hides the quadratic term): not supported
    vit_measured_linear = {r: (LINEAR[r][0] / 2, f) for r, (_, f) in QUADRATIC.items()}
    runs = speed_runs(mambavision=bench_frame(loop=600, alone=900, sweep=LINEAR),
                      vit=bench_frame(loop=600, alone=3000, sweep=vit_measured_linear))
    out = findings.judge(claim("scaling"), runs, REF)
    assert out["verdict"] == "not supported" and "no more slowly" in out["reason"]
    # no sweep: no verdict
    runs = speed_runs(mambavision=bench_frame(loop=600, alone=900), vit=bench_frame(loop=600, alone=3000))
    assert findings.judge(claim("scaling"), runs, REF) == {"verdict": "no verdict", "reason": "no resolution sweep"}


def test_growth_exponents_skip_failed_resolutions():
    frame = bench_frame(sweep=LINEAR)
    frame.loc[len(frame)] = {"kind": "resolution_sweep", "resolution": 1792, "pixels": 1792 ** 2,
                             "images_per_s": math.nan, "seconds_per_image": math.nan, "flops_per_image": math.nan}
    exps = findings.growth_exponents({"mambavision": {"benchmark": frame}}).set_index("encoder")
    assert exps.loc["mambavision", "measured"] == pytest.approx(1.0) and exps.loc["mambavision", "largest"] == 896
    assert exps.loc["mambavision", "ms_at_largest"] == pytest.approx(16.0)
    assert findings.growth_exponents({"vit": {"benchmark": None}}).empty


# ------------------------------------------------------------------------------ CLIP(ViT) as released
def released_runs(accuracy: float | None, **config) -> dict:
    run = made_run("vit", 0, right_on(4), **config)
    if accuracy is not None:
        run["before_training"] = {"fp32": {"accuracy": accuracy + 0.001, "n_val": N},
                                  "fp16": {"accuracy": accuracy, "n_val": N}}
    return {"vit": made_entry("vit", [run])}


def test_clip_as_released_against_the_authors_two_decimals():
    out = findings.judge(claim("clip_released"), released_runs(2313 / N), REF)  # 0.5896
    assert out["verdict"] == "supported" and out["low"] < 0.59 < out["high"]
    assert findings.evidence_text(claim("clip_released"), out) == "0.5896 (interval 0.5740-0.6050)"
    assert findings.judge(claim("clip_released"), released_runs(0.63), REF)["verdict"] == "not supported"
    assert findings.judge(claim("clip_released"), released_runs(None), REF)["reason"] == "no evaluation before training"
    assert findings.judge(claim("clip_released"), released_runs(0.5896, pretrained=False), REF)["verdict"] == "no verdict"
    assert findings.judge(claim("clip_released"), {}, REF)["reason"] == "no finished CLIP(ViT) run"


# ---------------------------------------------------------------------------------- tables of verdicts
def paper_edition() -> dict:
    return {**table1_runs({0: 680, 1: 681}, extra_right=100, n=1000), **released_runs(2313 / N)}


def test_verdicts_give_one_row_per_claim_and_edition_with_the_evidence():
    smoke = table1_runs({0: 680}, extra_right=100, n=1000, model_size="smoke", pretrained=False, data="generated")
    detail = findings.verdicts({"smoke": smoke, "paper": paper_edition()}, REF)
    assert list(detail.columns) == ["claim id", "claim", "edition", "measured", "verdict", "reason", "evidence"]
    assert len(detail) == 2 * len(findings.paper_claims(REF))
    assert list(dict.fromkeys(detail["claim id"])) == [c["id"] for c in findings.paper_claims(REF)]
    assert not detail.duplicated(["claim", "edition"]).any()
    assert set(detail.verdict) <= set(findings.VERDICTS)
    rows = detail.set_index(["claim id", "edition"])
    assert rows.loc[("accuracy", "paper"), "verdict"] == "supported"
    assert rows.loc[("accuracy", "smoke"), "verdict"] == "no verdict"
    assert rows.loc[("accuracy", "paper"), "evidence"]["found_in"] == 2
    assert rows.loc[("clip_released", "paper"), "verdict"] == "supported"

    # the findings: the last edition with a verdict speaks for each claim
    table = findings.findings_table(detail, REF)
    assert list(table.columns) == ["claim", "paper", "ours", "verdict", "reason"]
    assert len(table) == len(findings.paper_claims(REF))
    assert table.ours.iloc[0].endswith("[paper]") and table.verdict.iloc[0] == "supported"
    assert table.verdict.iloc[4] == "no verdict" and table.ours.iloc[4].endswith("[paper]")  # throughput: no benchmark
    assert findings.counts(table) == {"supported": 4, "partly": 1, "not supported": 0, "no verdict": 3}
    only_smoke = findings.findings_table(detail[detail.edition == "smoke"], REF)
    assert only_smoke.ours.iloc[0].endswith("[smoke]") and only_smoke.verdict.iloc[0] == "no verdict"

    # each seed's test, and the seeds' table
    tests = findings.table1_tests(detail)
    assert len(tests) == (1 + 2) * 4  # the smoke edition's seed and the paper edition's two, four Table 1 claims
    first = tests[(tests.claim == "accuracy") & (tests.edition == "paper")].iloc[0]
    assert first["test"] == "McNemar exact" and first["p or 95% interval"].startswith("p = ")
    assert first["found"] == "yes" and first["difference"] == pytest.approx(100 / 1000)
    loss = tests[tests.claim == "validation loss"].iloc[0]
    assert loss["test"] == "paired bootstrap" and " to " in loss["p or 95% interval"]
    seeds = findings.seed_table(detail).set_index(["claim", "edition"])
    assert seeds.loc[("accuracy", "paper"), "found in"] == "2 of 2"
    assert seeds.loc[("accuracy", "paper"), "beyond spread"] == "yes"
    assert seeds.loc[("accuracy", "paper"), "MVLIP"] == f"{0.7805:.4f} ± {0.001 / math.sqrt(2):.4f}"
    assert seeds.loc[("accuracy", "smoke"), "found in"] == "1 of 1"
    assert seeds.loc[("accuracy", "smoke"), "beyond spread"] == "one seed"


def test_findings_without_any_edition_still_give_one_row_per_claim():
    detail = findings.verdicts({}, REF, {})
    assert detail.empty and "claim id" in detail.columns
    table = findings.findings_table(detail, REF)
    assert len(table) == len(findings.paper_claims(REF)) and set(table.verdict) == {"no verdict"}
    assert set(table.reason) == {"no edition has a run"} and set(table.ours) == {"–"}
    assert findings.table1_tests(detail).empty and findings.seed_table(detail).empty


def write_run_folder(root, encoder: str, run: dict, done: int | None = None, finished: bool = True):
    """A run folder on disk, as train.train_run leaves it (``done`` of its epochs trained)."""
    folder = root / "paper" / encoder / f"seed-{run['seed']}"
    epochs = run["config"]["epochs"]
    done = epochs if done is None else done
    write_json(folder / "config.json", {**run["config"], "epochs": epochs, "n_val": run["metrics"]["n_val"]})
    rows = [{"epoch": e, "train_loss": 1.0, "accuracy": run["metrics"]["accuracy"]} for e in range(1, done + 1)]
    write_csv(folder / "history.csv", pd.DataFrame(rows))
    if finished:
        write_json(folder / "metrics.json", {**run["metrics"], "epochs": epochs})
        write_csv(folder / "per_image.csv.gz", run["per_image"])


def test_verdicts_over_run_folders_name_what_is_not_finished(tmp_path):
    runs = table1_runs({0: 680, 1: 681}, extra_right=100, n=1000)
    for run in runs["mambavision"]["runs"]:
        write_run_folder(tmp_path, "mambavision", run)
    write_run_folder(tmp_path, "swin", runs["swin"]["runs"][0], done=1, finished=False)
    editions, absent = findings.read_editions(tmp_path, ["smoke", "paper"], ["mambavision", "swin", "vit"])
    assert list(editions) == ["paper"] and list(editions["paper"]) == ["mambavision"]
    assert absent["paper"] == {"swin": "seed 0: partial (1 of 20 epochs)", "vit": "seed 0: missing"}
    read = editions["paper"]["mambavision"]["runs"]
    assert [r["seed"] for r in read] == [0, 1] and len(read[0]["per_image"]) == 1000
    detail = findings.verdicts(editions, REF, absent).set_index("claim id")
    for claim_id in ("accuracy", "val_loss"):
        assert detail.loc[claim_id, "verdict"] == "no verdict"
        assert detail.loc[claim_id, "reason"] == "no finished CLIP(Swin) run (seed 0: partial (1 of 20 epochs))"
    assert detail.loc["clip_released", "reason"].startswith("no finished CLIP(ViT) run (seed 0: missing)")
    # once the CLIP(Swin) run finishes, read back from its files, the paired tests give the verdict
    for run in runs["swin"]["runs"]:
        write_run_folder(tmp_path, "swin", run)
    editions, absent = findings.read_editions(tmp_path, ["paper"], ["mambavision", "swin"])
    out = findings.judge(claim("accuracy"), editions["paper"], REF, absent["paper"])
    assert out["verdict"] == "supported" and out["found_in"] == 2


# ------------------------------------------------------------------------------------------ the caveats
def test_same_class_captions_counts_images_whose_class_the_batch_shares():
    assert findings.same_class_captions(np.arange(64), batch_size=8) == 0.0        # every class once
    assert findings.same_class_captions(np.zeros(64, dtype=int), batch_size=8) == 8.0  # one class
    # the paper's protocol: about 35 images of each of 1,000 classes, batch 32: each image shares its batch
    # with another of its class with probability about 1 - (1 - 1/1000)^31
    labels = np.arange(34745) % 1000
    assert findings.same_class_captions(labels, 32) == pytest.approx(32 * (1 - (1 - 1 / 1000) ** 31), rel=0.1)


def run_findings_chapter(results_dir, monkeypatch) -> tuple[dict, str]:
    """The findings notebook's code cells run in this process over ``results_dir`` (its parameters cell, then
    ours): its namespace with what it glued under ``glued``, and the HTML of the tables it showed."""
    import IPython.display
    import nbformat
    from conftest import ROOT

    from mvlip_utils.report import show

    shown, glued = [], {}
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kwargs: shown.append(obj))
    monkeypatch.setattr(show, "glue", lambda **values: glued.update(values))
    namespace: dict = {}
    for cell in nbformat.read(ROOT / "notebooks" / "00_findings.ipynb", as_version=4).cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, "00_findings", "exec"), namespace)
            if "parameters" in cell.metadata.get("tags", []):
                namespace.update(results_dir=str(results_dir), editions=["smoke", "paper"])
    namespace["glued"] = glued
    return namespace, "\n".join(str(getattr(obj, "data", "")) for obj in shown)


def test_the_findings_chapter_runs_over_missing_and_partial_runs_and_over_none(tmp_path, monkeypatch, capsys):
    """The KeyError: 'claim id' of issue 17 was the chapter's over an edition with a missing run."""
    import matplotlib

    matplotlib.use("Agg")
    runs = table1_runs({0: 680}, extra_right=100, n=1000)
    write_run_folder(tmp_path, "mambavision", runs["mambavision"]["runs"][0])
    write_run_folder(tmp_path, "swin", runs["swin"]["runs"][0], done=1, finished=False)
    namespace, html = run_findings_chapter(tmp_path, monkeypatch)
    assert list(namespace["table"].verdict) == ["no verdict"] * len(findings.paper_claims(REF))
    assert "no finished CLIP(Swin) run (seed 0: partial (1 of 20 epochs))" in html
    assert 'id="claims-verdicts"' in html and 'id="editions"' in html
    glued = namespace["glued"]
    assert glued["claims"] == glued["no_verdict"] == len(findings.paper_claims(REF)) and glued["any_edition"]
    # the rules the chapter writes out are the code's constants
    assert (glued["alpha"], glued["spread"], glued["resamples"]) == (stats.ALPHA, stats.SPREAD_FACTOR, stats.N_RESAMPLES)
    assert (glued["speed_gap"], glued["exponent_gap"], glued["rounding"]) == (
        findings.MIN_SPEED_GAP_PERCENT, findings.EXPONENT_GAP, findings.RELEASED_ROUNDING)
    assert glued["released"] == 0.59 and glued["gain_points"] == pytest.approx(6.68)
    assert glued["paper_shared"] == pytest.approx(32 * (1 - (1 - 1 / 1000) ** 31), rel=0.1)
    namespace, html = run_findings_chapter(tmp_path / "empty", monkeypatch)
    assert namespace["editions"] == {} and "no edition has a run" in html and namespace["glued"]["any_edition"] is False
    capsys.readouterr()
