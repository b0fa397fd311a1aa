"""The verdicts on the paper's claims: one vocabulary, evidence rules, noise-aware throughput comparisons."""

import pandas as pd
import pytest

from mvlip_utils.report import disclosures, findings
from mvlip_utils.train import results

REF = results.paper_reference()


def run(encoder, acc=0.5, loss=1.5, pretrained=True, size="paper", classes=1000, epochs=20, data="data/imagenet-mini",
        device="cuda", benchmark=None, n_val=3923):
    metrics = {k: acc for k in ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted")}
    metrics.update(zeroshot_loss=loss, n_classes=classes, epochs=epochs, n_val=n_val)
    config = {"encoder": encoder, "pretrained": pretrained, "model_size": size, "data": data, "image_size": 224,
              "resolved_device": device, "device_name": "NVIDIA H200" if device == "cuda" else "CPU (x86_64, 2 cores)"}
    return {"config": config, "metrics": metrics, "benchmark": benchmark, "run_dir": f"results/x/{encoder}"}


def speed(ips, spread=0.01, loop=None, sweep=None):
    rows = [{"kind": "model_only", "setting": "paper's conditions", "mode": "inference", "precision": "fp32-tf32conv",
             "batch_size": 32, "device_name": "NVIDIA H200", "images_per_s": ips, "images_per_s_p10": ips * (1 - spread),
             "images_per_s_p90": ips * (1 + spread)}]
    if loop:
        rows.append({"kind": "eval_loop", "source": "jpeg", "num_workers": 4, "images_per_s": loop,
                     "images_per_s_min": loop * 0.98, "images_per_s_max": loop * 1.02})
    for res, ms in (sweep or {}).items():
        rows.append({"kind": "resolution_sweep", "resolution": res, "pixels": res * res, "images_per_s": 1e3 / ms,
                     "seconds_per_image": ms / 1e3, "marginal_memory_per_image_bytes": float(res * res)})
    return pd.DataFrame(rows)


def claim(claim_id):
    return next(c for c in findings.paper_claims(REF) if c["id"] == claim_id)


def test_the_claims_and_their_numbers_come_from_the_paper_tables():
    claims = {c["id"]: c for c in findings.paper_claims(REF)}
    assert list(claims) == ["accuracy", "precision_weighted", "recall_weighted", "f1_weighted", "val_loss",
                            "throughput_vit", "throughput_swin", "scaling"]
    assert claims["accuracy"]["paper"].startswith("+9.83%") and "+6.68 points" in claims["accuracy"]["paper"]
    assert claims["f1_weighted"]["paper"].startswith("+10.02%")
    assert claims["val_loss"]["paper"].startswith("37.0% lower") and claims["val_loss"]["threshold"] == 37
    assert claims["throughput_vit"]["threshold"] == 33 and claims["throughput_swin"]["threshold"] == 41


@pytest.mark.parametrize("mv, verdict", [(0.56, "supported"), (0.535, "partly"), (0.45, "not supported"),
                                         (0.501, "not supported")])
def test_table1_verdicts_follow_the_data_with_a_noise_floor(mv, verdict):
    runs = {"mambavision": run("mambavision", mv), "swin": run("swin", 0.5)}
    out = findings.judge(claim("accuracy"), runs, REF)
    assert out["verdict"] == verdict
    if mv == 0.501:  # 0.1 points over 3,923 images is inside twice the standard error
        assert out["reason"].startswith("no difference")


def test_table1_needs_the_papers_conditions_and_says_which_are_missing():
    runs = {"mambavision": run("mambavision", 0.9, pretrained=False, size="smoke", classes=10, epochs=6,
                               data="generated"),
            "swin": run("swin", 0.1, pretrained=False, size="smoke", classes=10, epochs=6, data="generated")}
    out = findings.judge(claim("accuracy"), runs, REF)
    assert out["verdict"] == "no verdict" and out["ours"].startswith("+800.00%")
    for gap in ("tiny towers", "random weights", "generated data", "10 classes, not 1000", "6 epochs, not 20"):
        assert gap in out["reason"]
    del runs["swin"]
    assert findings.judge(claim("val_loss"), runs, REF)["reason"] == "the CLIP(Swin) run of this edition is not among its finished runs"


def test_loss_verdict():
    runs = {"mambavision": run("mambavision", loss=1.0), "swin": run("swin", loss=2.0)}
    assert findings.judge(claim("val_loss"), runs, REF)["verdict"] == "supported"  # 50% lower >= 37%
    runs["mambavision"] = run("mambavision", loss=2.5)
    assert findings.judge(claim("val_loss"), runs, REF)["verdict"] == "not supported"


def test_throughput_is_judged_on_gpu_measurements_with_a_noise_floor():
    runs = {"mambavision": run("mambavision", pretrained=False, benchmark=speed(1000, loop=624.4)),
            "vit": run("vit", pretrained=False, benchmark=speed(3000, loop=628.8)),
            "swin": run("swin", pretrained=False, benchmark=speed(990, loop=600))}
    vit = findings.judge(claim("throughput_vit"), runs, REF)
    assert vit["verdict"] == "not supported" and vit["reason"].startswith("MVLIP is slower")
    # the paper's method: 624.4 against 628.8 images/s is -0.7%, no difference (not "refuted")
    assert "-0.7% (no difference)" in vit["reason"]
    swin = findings.judge(claim("throughput_swin"), runs, REF)  # +1.0%: under the 3% floor
    assert swin["verdict"] == "not supported" and "no difference" in swin["reason"]
    runs["swin"] = run("swin", pretrained=False, benchmark=speed(700))
    assert findings.judge(claim("throughput_swin"), runs, REF)["verdict"] == "supported"  # +42.9% >= 41%
    runs["swin"] = run("swin", pretrained=False, benchmark=speed(900))
    assert findings.judge(claim("throughput_swin"), runs, REF)["verdict"] == "partly"  # +11%
    # overlapping spreads are no difference even above the floor
    runs["swin"] = run("swin", pretrained=False, benchmark=speed(940, spread=0.1))
    assert "no difference" in findings.judge(claim("throughput_swin"), runs, REF)["reason"]
    # measured on a CPU: no verdict
    cpu = {e: run(e, size="smoke", device="cpu", benchmark=speed(100)) for e in ("mambavision", "vit")}
    out = findings.judge(claim("throughput_vit"), cpu, REF)
    assert out["verdict"] == "no verdict" and "not a GPU" in out["reason"] and "tiny towers" in out["reason"]


def test_scaling_verdict_from_the_growth_exponents():
    linear = {224: 1.0, 448: 4.0, 896: 16.0}         # time per image ~ pixels^1
    quadratic = {224: 0.5, 448: 8.0, 896: 128.0}     # ~ pixels^2
    runs = {"mambavision": run("mambavision", benchmark=speed(1000, sweep=linear)),
            "vit": run("vit", benchmark=speed(3000, sweep=quadratic))}
    out = findings.judge(claim("scaling"), runs, REF)
    assert out["verdict"] == "supported" and "b = 1.00 (MambaVision-B), 2.00 (ViT-B/32)" in out["ours"]
    runs["vit"] = run("vit", benchmark=speed(3000, sweep={224: 0.3, 448: 1.0, 896: 4.0}))  # sub-linear, faster
    assert findings.judge(claim("scaling"), runs, REF)["verdict"] == "not supported"
    exps = findings.growth_exponents(runs).set_index("encoder")
    assert exps.loc["mambavision", "memory exponent"] == pytest.approx(1.0)
    assert exps.loc["vit", "largest resolution"] == 896


def test_findings_table_takes_the_edition_with_evidence_and_one_vocabulary():
    smoke = {e: run(e, 0.5, pretrained=False, size="smoke", classes=10, epochs=6, data="generated", device="cpu",
                    benchmark=speed(100)) for e in ("mambavision", "swin", "vit")}
    gpu = {"mambavision": run("mambavision", pretrained=False, data="generated-imagenet", epochs=2,
                              benchmark=speed(1000, sweep={224: 1.0, 448: 4.0})),
           "swin": run("swin", pretrained=False, data="generated-imagenet", epochs=2, benchmark=speed(900)),
           "vit": run("vit", pretrained=False, data="generated-imagenet", epochs=2,
                      benchmark=speed(3000, sweep={224: 0.3, 448: 0.6}))}
    table = findings.findings_table({"smoke": smoke, "speed": gpu}, REF)
    assert len(table) == 8 and set(table.verdict) <= set(findings.VERDICTS)
    assert table.verdict.iloc[:5].eq("no verdict").all()  # no edition is pretrained on ImageNet-mini
    assert table.reason.iloc[0].startswith("no edition has the conditions; the closest, speed: random weights")
    assert table.ours.iloc[5].endswith("[speed]") and table.verdict.iloc[5] == "not supported"
    detail = findings.verdicts_by_edition({"smoke": smoke, "speed": gpu}, REF)
    assert len(detail) == 16 and set(detail.edition) == {"smoke", "speed"}
    assert detail[detail.edition == "smoke"].verdict.eq("no verdict").all()


def test_rules_and_disclosures_are_computed_from_the_constants_and_the_tables():
    rules = "\n".join(disclosures.rules_text())
    assert f"{findings.MIN_SPEED_GAP_PERCENT:.0f}%" in rules and str(findings.QUADRATIC_MIN) in rules
    gpu = {"mambavision": {"config": {"model_size": "paper", "parameters": {"image_tower": {"total": 97_200_000}}}}}
    text = "\n".join(disclosures.disclosures(REF, {"speed": gpu}))
    assert "the text tower included" in text and "lowest mean training loss" in text
    assert "0.59 accuracy" in text and "6.68 points" in text
    assert "MVLIP 97.7 M in the paper, 97.2 M here" in text


# ------------------------------------------------------------- missing, failed and partial runs (issue 17)
def _run_folder(root, encoder, epochs=2, done=2, metrics=True, config=True, bad_metrics=False):
    """A run folder as train.train_run leaves it: config.json at the start, a history row per epoch, and
    metrics.json at the end (``done`` epochs trained of ``epochs``)."""
    run = root / "speed" / encoder
    run.mkdir(parents=True)
    if config:
        results.write_json(run / "config.json", {**globals()["run"](encoder, pretrained=False)["config"],
                                                 "epochs": epochs})
    if done:
        results.write_history(run, [{"epoch": e, "train_loss": 1.0, "accuracy": 0.001} for e in range(1, done + 1)])
    if metrics:
        results.write_json(run / "metrics.json", {**globals()["run"](encoder)["metrics"],
                                                  "epochs": done + 1 if bad_metrics else done})
    return run


@pytest.mark.parametrize("case, state, detail", [
    ("finished", "finished", "2 of 2 epochs"),
    ("missing", "missing", "no run files"),
    ("partial", "partial", "1 of 2 epochs"),
    ("no epoch", "failed", "it stopped before its first epoch ended"),
    ("not evaluated", "failed", "it trained 2 of 2 epochs but has no final evaluation (no metrics.json)"),
    ("disagree", "failed", "its files disagree: config.json says 2 epochs, history.csv has 2, metrics.json says 3"),
    ("no config", "failed", "config.json is missing beside ['history.csv', 'metrics.json']"),
])
def test_run_state_from_the_run_folder_files(tmp_path, case, state, detail):
    kwargs = {"finished": {}, "partial": dict(done=1, metrics=False), "no epoch": dict(done=0, metrics=False),
              "not evaluated": dict(metrics=False), "disagree": dict(bad_metrics=True),
              "no config": dict(config=False)}
    run = _run_folder(tmp_path, "swin", **kwargs[case]) if case != "missing" else tmp_path / "speed" / "swin"
    assert results.run_state(run) == (state, detail)
    loaded = results.load_all_runs(tmp_path, "speed", ["swin"])
    assert list(loaded) == (["swin"] if state == "finished" else [])
    unfinished = results.unfinished_runs(tmp_path, "speed", ["swin"])
    assert unfinished == ({} if state == "finished" else {"swin": results.run_state_phrase(state, detail)})


@pytest.mark.parametrize("case, says", [
    ("missing", "the CLIP(Swin) run of this edition is missing"),
    ("partial", "the CLIP(Swin) run of this edition is partial: 1 of 2 epochs"),
    ("failed", "the CLIP(Swin) run of this edition failed: it stopped before its first epoch ended"),
])
def test_verdict_rows_say_which_run_is_missing_failed_or_partial(tmp_path, case, says):
    for encoder in ("mambavision", "vit"):
        _run_folder(tmp_path, encoder)
    if case != "missing":
        _run_folder(tmp_path, "swin", done=1 if case == "partial" else 0, metrics=False)
    editions, absent = findings.read_editions(tmp_path, ["smoke", "speed"], ["mambavision", "swin", "vit"])
    assert list(editions) == ["speed"] and list(editions["speed"]) == ["mambavision", "vit"]
    detail = findings.verdicts_by_edition(editions, REF, absent).set_index("claim id")
    for claim_id in ("accuracy", "val_loss", "throughput_swin"):
        assert detail.loc[claim_id, "verdict"] == "no verdict" and detail.loc[claim_id, "reason"] == says
    assert says not in detail.loc["throughput_vit", "reason"]  # a claim that does not need CLIP(Swin)
    table = findings.findings_table(editions, REF, absent)
    assert table.reason.iloc[0] == f"no edition has the conditions; the closest, speed: {says}"
    sentence = findings.unfinished_sentence(absent)
    assert f"in **speed** the CLIP(Swin) run {says.split('of this edition ')[1]}" in sentence


def test_findings_without_any_edition_still_give_one_row_per_claim():
    editions, absent = {}, {}
    assert findings.verdicts_by_edition(editions, REF, absent).empty
    table = findings.findings_table(editions, REF, absent)
    assert len(table) == len(findings.paper_claims(REF)) and set(table.verdict) == {"no verdict"}
    assert findings.unfinished_sentence(absent) == ""


@pytest.mark.slow
def test_findings_chapter_executes_over_an_edition_with_a_missing_run(tmp_path):
    """00_findings through papermill over a speed edition whose CLIP(Swin) run is missing and CLIP(ViT) run
    partial (the KeyError: 'claim id' of issue 17), and over no runs at all."""
    import nbformat
    import papermill
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    _run_folder(tmp_path, "mambavision")
    _run_folder(tmp_path, "vit", done=1, metrics=False)
    for results_dir in (tmp_path, tmp_path / "empty"):
        out = tmp_path / f"00_findings_{results_dir.name}.ipynb"
        papermill.execute_notebook(str(root / "notebooks" / "00_findings.ipynb"), str(out), kernel_name="mvlip",
                                   parameters={"results_dir": str(results_dir)}, cwd=str(root), progress_bar=False)
        text = "\n".join(str(o.get("data", {}).get("text/markdown", "")) + str(o.get("data", {}).get("text/html", ""))
                         for c in nbformat.read(out, 4).cells for o in c.get("outputs", []))
        if results_dir == tmp_path:
            assert "the CLIP(Swin) run of this edition is missing" in text
            assert "the CLIP(ViT) run is partial: 1 of 2 epochs" in text
        else:
            assert "No finished runs were found" in text and "no edition has a run" in text


# --------------------------------------------------------------------------- no ratios of noise (issue 20)
def test_values_at_chance_level_give_their_reason_not_a_percentage():
    # the speed edition's random-weight runs: 1000 classes, 3000 validation images
    runs = {e: run(e, acc, loss, pretrained=False, data="generated-imagenet", epochs=2, n_val=3000)
            for e, acc, loss in (("mambavision", 0.0003, 6.9151), ("swin", 0.0010, 6.9090))}
    out = findings.judge(claim("accuracy"), runs, REF)
    assert out["ours"] == "both at chance (1/1000, at most 0.0022 over 3000 images) (0.0003 vs 0.0010)"
    assert "%" not in out["ours"] and out["verdict"] == "no verdict"
    loss = findings.judge(claim("val_loss"), runs, REF)
    assert loss["ours"].startswith("both at chance (a uniform guess's ln 1000 = 6.908 or above)")
    # one of them clearly above chance: the relative change is a measurement again
    runs["mambavision"] = run("mambavision", 0.02, 6.5, pretrained=False, data="generated-imagenet", epochs=2, n_val=3000)
    assert findings.judge(claim("accuracy"), runs, REF)["ours"].startswith("+1900.00% (0.0200 vs 0.0010)")
    assert findings.judge(claim("val_loss"), runs, REF)["ours"].startswith("5.9% lower")
    # the rule's edge: chance + twice the standard error of 1/1000 over 3000 images
    assert findings.chance_reason("accuracy", 0.0021, 0.0, 1000, 3000) is not None
    assert findings.chance_reason("accuracy", 0.0022, 0.0, 1000, 3000) is None
    assert findings.chance_reason("top5", 0.005, 0.006, 1000, 3000) is not None  # 5/1000
    assert findings.chance_reason("accuracy", 0.0, 0.0, None, 3000) is None  # unknown classes: no rule


def test_the_verdicts_by_claim_name_each_claim_once():
    base = dict(pretrained=False, data="generated-imagenet", epochs=2, n_val=3000)
    editions = {"smoke": {e: run(e, 0.5, 1.0, size="smoke", classes=10, n_val=120) for e in ("mambavision", "swin", "vit")},
                "speed": {e: run(e, 0.001, 6.91, **base) for e in ("mambavision", "swin", "vit")}}
    table = findings.verdicts_by_claim(editions, REF)
    claims = table.index.get_level_values(0)
    assert list(dict.fromkeys(claims)) == [c["short"] for c in findings.paper_claims(REF)]
    assert list(table.columns) == ["ours", "verdict"]  # the long claim text is not a column
    assert not any("%" in str(v) for v in table.xs("speed", level="edition")["ours"].iloc[:5])
    assert table.loc[("accuracy", "smoke"), "ours"].startswith("+0.00%")  # ten classes, far above chance
