"""The study runner (mvlip_utils.study): notebook hygiene, failure messages, reuse, the discussion's tables."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from mvlip_utils import discussion, report, results, study
from mvlip_utils.profiles import ENCODERS, get_config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_FILES = sorted((ROOT / "notebooks").glob("*.ipynb"))


# ------------------------------------------------------------------------------- notebook hygiene
def test_the_five_notebooks_are_there():
    assert [p.stem for p in NOTEBOOK_FILES] == list(study.NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_committed_notebooks_have_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {index} has outputs"
            assert cell.execution_count is None, f"{path.name} cell {index} has an execution count"
    assert "papermill" not in nb.metadata, f"{path.name} is an executed copy"


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_one_parameters_cell_first_with_every_parameter(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    assert tagged[0] == first_code, f"{path.name}: the parameters cell is not the first code cell"
    names = study.notebook_parameters(path)
    assert len(names) == len(set(names)), f"{path.name}: a parameter is assigned twice"
    missing = set(report.parameter_names()) - set(names)
    per_encoder = path.stem in study.PER_ENCODER
    missing -= {"encoder"} if not per_encoder else set()
    assert not missing, f"{path.name}: parameters cell lacks {sorted(missing)}"
    assert ("encoder" in names) == per_encoder and ("encoders" in names) != per_encoder
    # defaults: the profile name and the encoder(s); every StudyConfig field None (= the profile's value)
    cell = nb.cells[tagged[0]].source
    values = {t.id: ast.literal_eval(n.value) for n in ast.parse(cell).body if isinstance(n, ast.Assign)
              for t in n.targets}
    assert values["profile"] == "smoke"
    assert all(values[f] is None for f in report.parameter_names() if f not in ("profile", "encoder"))


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_notebooks_start_with_a_title_and_compile(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    titles = [c for c in nb.cells if c.cell_type == "markdown" and c.source.lstrip().startswith("# ")]
    assert len(titles) == 1, f"{path.name}: one H1 heading per page"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            compile(cell.source, f"{path.name}[{index}]", "exec")


def test_committed_toc_is_the_generated_smoke_toc():
    assert (ROOT / "_toc.yml").read_text() == study.toc_text("smoke", ENCODERS)


# ---------------------------------------------------------------------------------- plan, params
def test_plan_runs_setup_once_each_encoder_then_discussion():
    steps = study.plan(["swin", "vit"])
    assert [s.label for s in steps] == [
        "01_setup", "02_train [swin]", "03_evaluate [swin]", "04_benchmark [swin]",
        "02_train [vit]", "03_evaluate [vit]", "04_benchmark [vit]", "05_discussion"]
    assert steps[1].output(Path("book"), "smoke") == Path("book/executed/smoke/swin/02_train.ipynb")
    assert steps[0].output(Path("book"), "paper") == Path("book/executed/paper/01_setup.ipynb")


def test_parse_overrides_types_values_and_rejects_bad_pairs():
    got = study.parse_overrides(["epochs=2", "lr=1e-4", "pretrained=true", "data=/x/imagenet-mini",
                                 "image_weights=None", "resolutions=[64, 128]"])
    assert got == {"epochs": 2, "lr": 1e-4, "pretrained": True, "data": "/x/imagenet-mini",
                   "image_weights": None, "resolutions": [64, 128]}
    with pytest.raises(ValueError, match="key=value"):
        study.parse_overrides(["epochs"])


def test_check_overrides_names_the_bad_parameter():
    with pytest.raises(ValueError, match="epoch"):
        study.check_overrides("smoke", ["vit"], {"epoch": 2})
    with pytest.raises(ValueError, match="precision"):
        study.check_overrides("smoke", ["vit"], {"precision": "fp8"})
    with pytest.raises(ValueError, match="unknown encoder"):
        study.check_overrides("smoke", ["resnet"], {})
    study.check_overrides("smoke", ["vit"], {"epochs": 1, "repeats": 2}, notebook_names={"repeats"})
    # resume would only act where a step runs anyway (it is no part of the fingerprint): --force is the way
    with pytest.raises(ValueError, match="use --force"):
        study.check_overrides("smoke", ["vit"], {"resume": False}, notebook_names={"resume"})


def test_step_parameters_pass_only_what_the_notebook_defines():
    train, setup = study.Step(study.TRAIN, "swin"), study.Step(study.SETUP)
    overrides = {"epochs": 1, "repeats": 2}
    assert study.step_parameters(train, "smoke", ["swin"], overrides, ["profile", "encoder", "epochs"]) == {
        "profile": "smoke", "epochs": 1, "encoder": "swin"}
    assert study.step_parameters(setup, "smoke", ["swin", "vit"], overrides, ["epochs"]) == {
        "profile": "smoke", "epochs": 1, "encoders": ["swin", "vit"]}
    forced = study.step_parameters(train, "smoke", ["swin"], {}, [], force=True)
    assert forced["resume"] is False


def test_kernel_runs_this_interpreter():
    from jupyter_client.kernelspec import KernelSpecManager
    import os
    import sys

    name = study.kernel_for_this_python()
    argv0 = KernelSpecManager().get_kernel_spec(name).argv[0]
    assert argv0 in {"python", "python3"} or os.path.abspath(argv0) == os.path.abspath(sys.executable)


# ------------------------------------------------------------------------------- failure message
def _notebook(path: Path, *cells: str, parameters: str = "profile = 'smoke'\nencoder = None") -> Path:
    first = new_code_cell(parameters)
    first.metadata["tags"] = ["parameters"]
    nb = new_notebook(cells=[first] + [new_code_cell(c) for c in cells])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_failure_names_notebook_encoder_and_cell(tmp_path):
    source = _notebook(tmp_path / "02_train.ipynb", "x = 1",
                       "values = {'a': 1}\nraise ValueError(f'boom: bad value {values}')\ny = 2")
    step = study.Step(study.TRAIN, "swin")
    output = tmp_path / "out" / "02_train.ipynb"
    with pytest.raises(study.StudyStepError) as info:
        study.execute_step(step, source, output, {"profile": "smoke", "encoder": "swin"},
                           study.kernel_for_this_python(), tmp_path, fp="x")
    message = str(info.value)
    assert "02_train.ipynb" in message and "'swin'" in message
    assert "cell 3" in message  # parameters, injected parameters, x = 1, the failing one (0-based: 3)
    assert "| raise ValueError(f'boom: bad value {values}')" in message
    assert "ValueError: boom: bad value {'a': 1}" in message
    assert str(output) in message
    assert (info.value.notebook, info.value.encoder, info.value.cell_index) == ("02_train", "swin", 3)
    assert "\x1b[" not in message  # no terminal colour codes


# ---------------------------------------------------------------------------------- reuse / force
TRAIN_CELL = """
import json, pathlib
run = pathlib.Path(results_dir or 'results') / profile / encoder
run.mkdir(parents=True, exist_ok=True)
(run / 'metrics.json').write_text(json.dumps({'accuracy': 0.5}))
(run / 'history.csv').write_text('epoch,train_loss\\n1,1.0\\n')
"""
BENCH_CELL = """
import json, pathlib
run = pathlib.Path(results_dir or 'results') / profile / encoder
(run / 'benchmark.json').write_text(json.dumps({'records': []}))
"""


def _tiny_study(root: Path) -> None:
    params_one = "profile = 'smoke'\nencoder = 'vit'\nresults_dir = None\nresume = True"
    params_all = "profile = 'smoke'\nencoders = ['vit']\nresults_dir = None"
    nbs = root / "notebooks"
    _notebook(nbs / "01_setup.ipynb", "print('setup')", parameters=params_all)
    _notebook(nbs / "02_train.ipynb", TRAIN_CELL, parameters=params_one)
    _notebook(nbs / "03_evaluate.ipynb", "print('evaluate')", parameters=params_one)
    _notebook(nbs / "04_benchmark.ipynb", BENCH_CELL, parameters=params_one)
    _notebook(nbs / "05_discussion.ipynb", "print(encoders)", parameters=params_all)


def test_second_run_reuses_and_a_missing_result_reruns_from_there(tmp_path):
    _tiny_study(tmp_path)
    lines: list[str] = []
    kwargs = dict(profile="smoke", encoders=["swin", "vit"], book=False, root=tmp_path, log=lines.append)

    first = study.run_study(**kwargs)
    assert [s[1] for s in first["steps"]] == ["executed"] * 8
    executed = tmp_path / "book" / "executed" / "smoke"
    for name in ("01_setup.ipynb", "vit/02_train.ipynb", "vit/04_benchmark.ipynb", "05_discussion.ipynb"):
        nb = nbformat.read(executed / name, as_version=4)
        pm = nb.metadata["papermill"]
        assert nb.metadata["mvlip"]["fingerprint"] and not pm["exception"] and pm["end_time"]
    assert (tmp_path / "results" / "smoke" / "vit" / "metrics.json").is_file()
    assert any("02_train [vit]" in line and "done in" in line for line in lines)
    assert any(line.startswith("[study] total") for line in lines)

    second = study.run_study(**kwargs)
    assert [s[1] for s in second["steps"]] == ["reused"] * 8

    # vit's results vanished: vit's train runs again, then what reads it (vit's evaluate and benchmark, the
    # discussion); setup and swin's steps are reused
    (tmp_path / "results" / "smoke" / "vit" / "metrics.json").unlink()
    third = study.run_study(**kwargs)
    assert [s[1] for s in third["steps"]] == ["reused"] * 4 + ["executed"] * 4
    assert (tmp_path / "results" / "smoke" / "vit" / "metrics.json").is_file()

    # vit's run was retrained outside the study (its files changed): what shows it runs again
    history = tmp_path / "results" / "smoke" / "vit" / "history.csv"
    history.write_text(history.read_text() + "2,0.9\n")
    fourth = study.run_study(**kwargs)
    assert [s[1] for s in fourth["steps"]] == ["reused"] * 4 + ["executed"] * 4
    assert [s[1] for s in study.run_study(**kwargs)["steps"]] == ["reused"] * 8


def test_fingerprint_follows_notebook_parameters_and_library(tmp_path):
    source = _notebook(tmp_path / "02_train.ipynb", "x = 1")
    base = study.fingerprint(source, {"profile": "smoke", "encoder": "vit"}, "lib1")
    assert study.fingerprint(source, {"profile": "smoke", "encoder": "vit", "resume": False}, "lib1") == base
    assert study.fingerprint(source, {"profile": "smoke", "encoder": "swin"}, "lib1") != base
    assert study.fingerprint(source, {"profile": "smoke", "encoder": "vit"}, "lib2") != base
    _notebook(source, "x = 2")
    assert study.fingerprint(source, {"profile": "smoke", "encoder": "vit"}, "lib1") != base


def test_force_reruns_everything_and_retrains(tmp_path):
    _tiny_study(tmp_path)
    kwargs = dict(profile="smoke", encoders=["vit"], book=False, root=tmp_path, log=lambda _: None)
    study.run_study(**kwargs)
    forced = study.run_study(**kwargs, force=True)
    assert [s[1] for s in forced["steps"]] == ["executed"] * 5
    nb = nbformat.read(tmp_path / "book" / "executed" / "smoke" / "vit" / "02_train.ipynb", as_version=4)
    assert nb.metadata["papermill"]["parameters"]["resume"] is False
    # resume is not part of the fingerprint: the next plain run reuses the forced one
    again = study.run_study(**kwargs)
    assert [s[1] for s in again["steps"]] == ["reused"] * 5


def test_cli_reports_a_failing_step_and_exits_nonzero(tmp_path, capsys):
    _tiny_study(tmp_path)
    _notebook(tmp_path / "notebooks" / "03_evaluate.ipynb", "1 / 0",
              parameters="profile = 'smoke'\nencoder = 'vit'")
    code = study.main(["--root", str(tmp_path), "--encoders", "vit", "--no-book"])
    err = capsys.readouterr().err
    assert code == 1
    assert "FAILED" in err and "03_evaluate.ipynb" in err and "'vit'" in err and "ZeroDivisionError" in err


# ------------------------------------------------------------------------------ reusable runs
def test_reusable_run_needs_same_parameters_and_epochs_and_refuses_another_finished_run(tmp_path):
    from mvlip_utils.towers import architecture
    from mvlip_utils.train import RunMismatchError

    config = get_config("smoke", encoder="vit", results_dir=str(tmp_path), epochs=2)
    run = results.run_dir(config)
    assert not report.reusable_run(config)  # nothing there: train
    tower = architecture("vit", "smoke", config.image_size)
    counts = {"n_val": 2, "n_classes": 2}
    results.write_history(run, [{c: 0.5 for c in results.HISTORY_COLUMNS} | {"epoch": e} for e in (1, 2)])
    results.write_json(run / "metrics.json", {"accuracy": 0.5, "epochs": 2, **counts})
    for name in ("predictions.csv", "per_class.csv", "confusion.csv"):
        pd.DataFrame({"x": [0, 1]}).to_csv(run / name, index=False)
    results.write_json(run / "config.json", {**config.to_dict(), "device": "cuda", "note": "other",
                                             "architecture": tower, **counts})
    assert report.reusable_run(config)  # device and note do not matter
    # a finished run of other parameters, epochs included, is refused (never retrained, extended or relabelled)
    with pytest.raises(RunMismatchError, match=r"lr 0.001 \(saved\) vs 0.0003 \(now\)"):
        report.reusable_run(config.replace(lr=3e-4))
    with pytest.raises(RunMismatchError, match=r"a finished 2-epoch run.*epochs 2 \(saved\) vs 3 \(now\)"):
        report.reusable_run(config.replace(epochs=3))
    # a run made with another smoke architecture of the same encoder (the code changed) is refused too
    other = {**tower, "overrides": {**tower["overrides"], "depth": 3}}
    results.write_json(run / "config.json", {**config.to_dict(), "architecture": other, **counts})
    with pytest.raises(RunMismatchError, match="another vit tower"):
        report.reusable_run(config)


# ------------------------------------------------------------------------- discussion: the claims
def _runs(mv: float, swin: float, vit: float, loss=(1.0, 2.0, 1.5), pretrained=False, size="smoke"):
    out = {}
    for encoder, acc, l in zip(("mambavision", "swin", "vit"), (mv, swin, vit), loss):
        metrics = {k: acc for k in ("accuracy", "precision_weighted", "recall_weighted", "f1_weighted",
                                    "precision_macro", "recall_macro", "f1_macro", "top5")}
        metrics["zeroshot_loss"] = l
        out[encoder] = {"metrics": metrics, "config": {"pretrained": pretrained, "model_size": size}}
    return out


def _bench(**ips):
    return {e: {"records": [{"kind": "eval_loop", "images_per_s": v[0]},
                            {"kind": "model_only", "images_per_s": v[1]},
                            {"kind": "resolution_sweep", "images_per_s": 1.0}]} for e, v in ips.items()}


def test_table1_puts_paper_and_ours_side_by_side():
    ref = results.paper_reference()
    t1 = discussion.table1(_runs(0.55, 0.50, 0.40), ref)
    paper = t1["paper: MVLIP vs CLIP(Swin) (%)"]
    # the paper's own improvements (Table 1) follow from its numbers
    for metric, claimed in (("Accuracy", 9.83), ("Precision (weighted)", 9.42), ("Recall (weighted)", 9.83),
                            ("F1 (weighted)", 10.02)):
        assert paper[metric] == pytest.approx(claimed, abs=0.006)
    assert paper["Validation loss (zero-shot CE)"] == pytest.approx(-37.0, abs=0.05)  # "37% lower"
    assert t1.loc["Accuracy", "ours MVLIP"] == 0.55
    assert t1.loc["Accuracy", "ours CLIP(ViT)"] == 0.40
    assert t1.loc["Accuracy", "ours: MVLIP vs CLIP(Swin) (%)"] == pytest.approx(10.0)
    assert math.isnan(t1.loc["Top-5 accuracy", "paper MVLIP"])


def test_table1_without_swin_has_no_relative_difference():
    runs = _runs(0.5, 0.5, 0.5)
    del runs["swin"]
    t1 = discussion.table1(runs, results.paper_reference())
    assert "ours CLIP(Swin)" not in t1.columns
    assert t1["ours: MVLIP vs CLIP(Swin) (%)"].isna().all()


def test_table2_relative_to_vit_both_ways():
    t2 = discussion.table2(_bench(mambavision=(120, 300), swin=(100, 200), vit=(150, 600)), results.paper_reference())
    mv = report.ENCODER_LABELS["mambavision"]
    assert t2.loc[mv, "paper images/s"] == 626.35
    assert t2.loc[mv, "paper vs CLIP(ViT) (%)"] == pytest.approx(33.49, abs=0.01)
    assert t2.loc[mv, "ours, paper's way (whole eval loop): images/s"] == 120
    assert t2.loc[mv, "ours, paper's way (whole eval loop): vs CLIP(ViT) (%)"] == pytest.approx(-20.0)
    assert t2.loc[mv, "ours, model only: vs CLIP(ViT) (%)"] == pytest.approx(-50.0)
    assert math.isnan(t2.loc[report.ENCODER_LABELS["vit"], "ours, model only: vs CLIP(ViT) (%)"])


@pytest.mark.parametrize("mv, expected", [(0.56, "supported"), (0.52, "partly"), (0.49, "not supported")])
def test_verdicts_follow_the_data(mv, expected):
    ref = results.paper_reference()
    runs = _runs(mv, 0.50, 0.40, loss=(1.0, 2.0, 1.5), pretrained=True, size="paper")
    t1 = discussion.table1(runs, ref)
    t2 = discussion.table2(_bench(mambavision=(150, 300), swin=(100, 200), vit=(100, 600)), ref)
    assert discussion.runs_are_evidence(runs)
    verdicts = discussion.claim_verdicts(t1, t2, evidence=True).set_index("claim").verdict
    assert verdicts.iloc[0].startswith(expected)           # 9-10% on the metrics
    assert verdicts.iloc[1] == "supported"                  # 50% lower loss >= 37%
    assert verdicts.iloc[2] == "supported"                  # eval loop +50% vs ViT
    assert verdicts.iloc[3] == "supported"                  # eval loop +50% vs Swin
    assert verdicts.iloc[4].startswith("not supported")     # model only -50% vs ViT
    assert verdicts.iloc[5] == "supported"                  # model only +50% vs Swin >= 41%


def test_smoke_runs_get_no_verdict():
    ref = results.paper_reference()
    runs = _runs(0.9, 0.1, 0.1)
    assert not discussion.runs_are_evidence(runs)
    t1 = discussion.table1(runs, ref)
    t2 = discussion.table2(_bench(mambavision=(150, 300), swin=(100, 200), vit=(100, 600)), ref)
    verdicts = discussion.claim_verdicts(t1, t2, evidence=False)
    assert verdicts.verdict.str.startswith("no verdict").all()
    assert verdicts.loc[0, "ours"] == "+800.00% to +800.00%"


def test_missing_runs_are_not_measured():
    ref = results.paper_reference()
    runs = _runs(0.5, 0.5, 0.5, pretrained=True, size="paper")
    del runs["swin"]
    verdicts = discussion.claim_verdicts(discussion.table1(runs, ref), discussion.table2({}, ref), evidence=True)
    assert verdicts.verdict.str.startswith("not measured").all()


def test_benchmark_records_round_trip_through_benchmark_json(tmp_path):
    from torch import nn

    from mvlip_utils import benchmark

    loop = benchmark.eval_loop_throughput(lambda: {"n_val": 40}, repeats=1)
    alone = benchmark.model_throughput(nn.Conv2d(3, 4, 3), batch_size=2, image_size=16, warmup=1, repeats=2)
    sweep = pd.DataFrame([{"resolution": 16, "images_per_s": 5.0}])
    path = benchmark.write_benchmark(tmp_path / "benchmark.json", discussion.benchmark_records(loop, alone, sweep))
    got = discussion.benchmark_numbers(benchmark.read_benchmark(path))
    assert got == pytest.approx({"eval_loop": loop["images_per_s"], "model_only": alone["images_per_s"]})


def test_relative_change():
    assert discussion.relative_change(110, 100) == pytest.approx(10.0)
    assert math.isnan(discussion.relative_change(1, 0))
    assert math.isnan(discussion.relative_change(None, 1))
    assert math.isnan(discussion.relative_change(float("nan"), 1))


# ------------------------------------------------------------------------------------ book build
def test_book_build_treats_warnings_as_errors(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "_config.yml").write_text((ROOT / "_config.yml").read_text())
    (tmp_path / "book" / "intro.md").write_text("# Intro\n\nSee {ref}`no-such-label`.\n")
    toc = study.write_toc(tmp_path / "toc.yml", "smoke", [])
    toc.write_text("format: jb-book\nroot: book/intro\n")
    with pytest.raises(RuntimeError, match="warnings are errors") as info:
        study.build_book(tmp_path, toc, log=lambda _: None)
    assert "no-such-label" in str(info.value)
    (tmp_path / "book" / "intro.md").write_text("# Intro\n\nNothing to warn about.\n")
    # pages outside the table of contents (hidden folders included) stay out of the build
    for stray in (".pytest_cache/README.md", "notes.md", "results/smoke/vit/readme.md"):
        (tmp_path / stray).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / stray).write_text("# Not a chapter\n")
    html = study.build_book(tmp_path, toc, log=lambda _: None)
    assert (html / "book" / "intro.html").is_file()
