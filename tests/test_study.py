"""The study runner (mvlip_utils.study.runner): notebook hygiene, editions, failure messages, reuse, parallel chains."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pandas as pd
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from mvlip_utils.study import book, reuse, runner as study
from mvlip_utils.settings import notebooks, params
from mvlip_utils.train import results, run_folder
from mvlip_utils.settings.profiles import ENCODERS, get_config

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_FILES = sorted((ROOT / "notebooks").glob("*.ipynb"))


# ------------------------------------------------------------------------------- notebook hygiene
def test_the_six_notebooks_are_there():
    assert [p.stem for p in NOTEBOOK_FILES] == list(notebooks.NOTEBOOKS)


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
def test_one_parameters_cell_first_with_every_parameter_and_its_help(path):
    nb = nbformat.read(path, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters'"
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    assert tagged[0] == first_code, f"{path.name}: the parameters cell is not the first code cell"
    # the cell is generated from the fields' help texts (profiles.StudyConfig / BenchSettings): one source
    assert nb.cells[tagged[0]].source == params.parameters_cell_source(path.stem), (
        f"{path.name}: its parameters cell differs from params.parameters_cell_source({path.stem!r})")
    names = study.notebook_parameters(path)
    assert len(names) == len(set(names)), f"{path.name}: a parameter is assigned twice"
    if path.stem != notebooks.FINDINGS:
        missing = set(params.parameter_names()) - set(names) - ({"encoder"} if path.stem not in notebooks.PER_ENCODER else set())
        assert not missing, f"{path.name}: parameters cell lacks {sorted(missing)}"
    assert ("encoder" in names) == (path.stem in notebooks.PER_ENCODER) and ("encoders" in names) != (path.stem in notebooks.PER_ENCODER)
    values = {t.id: ast.literal_eval(n.value) for n in ast.parse(nb.cells[tagged[0]].source).body
              if isinstance(n, ast.Assign) for t in n.targets}
    assert values.get("profile", "smoke") == "smoke"
    assert all(values[f] is None for f in params.parameter_names() if f in values and f not in ("profile", "encoder"))


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_every_code_cell_is_folded_or_shows_only_its_output(path):
    """The HTML reader sees prose, tables and figures; code is one click away (hide-input) or, for cells
    that only render, left out of the HTML (remove-input); JupyterLab shows every cell."""
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert {"hide-input", "remove-input"} & set(cell.metadata.get("tags", [])), f"{path.name} cell {index}"


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_notebooks_start_with_a_title_and_compile(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
    titles = [c for c in nb.cells if c.cell_type == "markdown" and c.source.lstrip().startswith("# ")]
    assert len(titles) == 1, f"{path.name}: one H1 heading per page"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            compile(cell.source, f"{path.name}[{index}]", "exec")


def test_committed_toc_is_the_default_books_toc():
    """_toc.yml (for `jupyter-book build .`) is what `make book` generates on a fresh clone: the findings,
    the smoke edition and every recorded edition committed under book/recorded/."""
    editions = {"smoke": list(ENCODERS), **study.recorded_editions(ROOT, exclude=["smoke"])}
    assert (ROOT / "_toc.yml").read_text() == book.toc_text(editions, ROOT)


# ---------------------------------------------------------------------------------- plan, params
def test_plan_runs_setup_once_each_encoder_then_discussion():
    steps = notebooks.plan(["swin", "vit"])
    assert [s.label for s in steps] == [
        "smoke: 01_setup", "smoke: 02_train [swin]", "smoke: 03_evaluate [swin]", "smoke: 04_benchmark [swin]",
        "smoke: 02_train [vit]", "smoke: 03_evaluate [vit]", "smoke: 04_benchmark [vit]", "smoke: 05_discussion"]
    assert steps[1].output(Path("book")) == Path("book/executed/smoke/swin/02_train.ipynb")
    # a GPU profile's edition is recorded (committed as executed), its discussion rebuilt wherever the book is
    speed = notebooks.plan(["vit"], "speed")
    assert speed[0].output(Path("book")) == Path("book/recorded/speed/01_setup.ipynb")
    assert speed[1].output(Path("book")) == Path("book/recorded/speed/vit/02_train.ipynb")
    assert speed[-1].output(Path("book")) == Path("book/executed/speed/05_discussion.ipynb")
    assert notebooks.Step(notebooks.FINDINGS).output(Path("book")) == Path("book/executed/00_findings.ipynb")


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
    with pytest.raises(ValueError, match=r"--encoders: parameter encoder='resnet'.*closest timm names"):
        study.check_overrides("smoke", ["resnet"], {})
    with pytest.raises(ValueError, match="names an encoder twice"):
        study.check_overrides("smoke", ["convnext_atto", "convnext_atto"], {})
    study.check_overrides("smoke", ["vit", "convnext_atto"], {})  # a timm model beside the paper's towers
    study.check_overrides("smoke", ["vit"], {"epochs": 1, "repeats": 2}, notebook_names={"repeats"})
    # resume would only act where a step runs anyway (it is no part of the fingerprint): --force is the way
    with pytest.raises(ValueError, match="use --force"):
        study.check_overrides("smoke", ["vit"], {"resume": False}, notebook_names={"resume"})


def test_step_parameters_pass_only_what_the_notebook_defines():
    train, setup = notebooks.Step(notebooks.TRAIN, "swin"), notebooks.Step(notebooks.SETUP)
    overrides = {"epochs": 1, "repeats": 2}
    assert study.step_parameters(train, ["swin"], overrides, ["profile", "encoder", "epochs"]) == {
        "profile": "smoke", "epochs": 1, "encoder": "swin"}
    assert study.step_parameters(setup, ["swin", "vit"], overrides, ["epochs"]) == {
        "profile": "smoke", "epochs": 1, "encoders": ["swin", "vit"]}
    forced = study.step_parameters(train, ["swin"], {}, [], force=True)
    assert forced["resume"] is False
    findings = study.step_parameters(notebooks.Step(notebooks.FINDINGS), ["vit"], {"results_dir": "r"}, ["results_dir"])
    assert findings == {"results_dir": "r", "encoders": ["vit"]}  # every edition: no profile


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
    step = notebooks.Step(notebooks.TRAIN, "swin")
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
import json, pathlib, time
if encoder == 'vit' and pathlib.Path('FAIL_VIT').exists():
    raise RuntimeError('vit fails on purpose')
run = pathlib.Path(results_dir or 'results') / profile / encoder
run.mkdir(parents=True, exist_ok=True)
(run / 'config.json').write_text(json.dumps({'encoder': encoder}))
(run / 'metrics.json').write_text(json.dumps({'accuracy': 0.5, 'trained_at': time.time()}))
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
    _notebook(nbs / "00_findings.ipynb", "print(editions)", parameters="encoders = ['vit']\neditions = ['smoke']\nresults_dir = None")
    _notebook(nbs / "01_setup.ipynb", "print('setup')", parameters=params_all)
    _notebook(nbs / "02_train.ipynb", TRAIN_CELL, parameters=params_one)
    _notebook(nbs / "03_evaluate.ipynb", "print('evaluate')", parameters=params_one)
    _notebook(nbs / "04_benchmark.ipynb", BENCH_CELL, parameters=params_one)
    _notebook(nbs / "05_discussion.ipynb", "print(encoders)", parameters=params_all)


def _statuses(report):
    return {label: status for label, status, _ in report["steps"]}


def test_second_run_reuses_and_a_changed_run_reruns_what_reads_it(tmp_path):
    _tiny_study(tmp_path)
    lines: list[str] = []
    kwargs = dict(profile="smoke", encoders=["swin", "vit"], book=False, root=tmp_path, log=lines.append)

    first = study.run_study(**kwargs)
    assert [s[1] for s in first["steps"]] == ["executed"] * 9
    executed = tmp_path / "book" / "executed"
    for name in ("smoke/01_setup.ipynb", "smoke/vit/02_train.ipynb", "smoke/vit/04_benchmark.ipynb",
                 "smoke/05_discussion.ipynb", "00_findings.ipynb"):
        nb = nbformat.read(executed / name, as_version=4)
        pm = nb.metadata["papermill"]
        assert nb.metadata["mvlip"]["fingerprint"] and not pm["exception"] and pm["end_time"]
    assert nbformat.read(executed / "00_findings.ipynb", 4).metadata["papermill"]["parameters"]["editions"] == ["smoke"]
    assert any("smoke: 02_train [vit]" in line and "done in" in line for line in lines)
    assert any(line.startswith("[study] total") for line in lines)

    second = study.run_study(**kwargs)
    assert [s[1] for s in second["steps"]] == ["reused"] * 9

    # vit's results vanished: vit's train runs again; what reads its files (vit's evaluate, the discussion,
    # the findings) runs again because they changed; the benchmark (which reads none of them), setup and swin
    # are reused
    (tmp_path / "results" / "smoke" / "vit" / "metrics.json").unlink()
    third = _statuses(study.run_study(**kwargs))
    assert [k for k, v in third.items() if v == "executed"] == [
        "smoke: 02_train [vit]", "smoke: 03_evaluate [vit]", "smoke: 05_discussion", "00_findings"]
    assert (tmp_path / "results" / "smoke" / "vit" / "metrics.json").is_file()
    # a run file changed outside the study (e.g. another benchmark): the page that made it is made again;
    # it writes the file the study had, so nothing that reads it changes
    (tmp_path / "results" / "smoke" / "swin" / "benchmark.json").write_text('{"records": [1]}')
    fourth = _statuses(study.run_study(**kwargs))
    assert [k for k, v in fourth.items() if v == "executed"] == ["smoke: 04_benchmark [swin]"]


def test_fingerprint_follows_notebook_parameters_library_and_inputs(tmp_path):
    source = _notebook(tmp_path / "02_train.ipynb", "x = 1")
    base = reuse.fingerprint(source, {"profile": "smoke", "encoder": "vit"}, "lib1")
    assert reuse.fingerprint(source, {"profile": "smoke", "encoder": "vit", "resume": False}, "lib1") == base
    assert reuse.fingerprint(source, {"profile": "smoke", "encoder": "swin"}, "lib1") != base
    assert reuse.fingerprint(source, {"profile": "smoke", "encoder": "vit"}, "lib2") != base
    assert reuse.fingerprint(source, {"profile": "smoke", "encoder": "vit"}, "lib1", "inputs") != base
    _notebook(source, "x = 2")
    assert reuse.fingerprint(source, {"profile": "smoke", "encoder": "vit"}, "lib1") != base
    (tmp_path / "a.json").write_text("1")
    digest = reuse.files_digest([tmp_path / "a.json", tmp_path / "missing.json"], tmp_path)
    (tmp_path / "a.json").write_text("2")
    assert reuse.files_digest([tmp_path / "a.json", tmp_path / "missing.json"], tmp_path) != digest


def test_step_inputs_are_read_under_results_dir(tmp_path):
    """The discussion's edition record (book/recorded/<profile>/edition.json: how its chains used the GPUs)
    and the findings' projections (<results_dir>/<profile>/study_projection.json) are inputs, the run files
    under results_dir."""
    discussion, findings = notebooks.Step(notebooks.DISCUSSION), notebooks.Step(notebooks.FINDINGS)
    overrides = {"results_dir": "elsewhere"}
    read = reuse.step_inputs(discussion, tmp_path, ["vit"], overrides)
    assert tmp_path / "elsewhere" / "smoke" / "vit" / "metrics.json" in read
    assert tmp_path / "book" / "recorded" / "smoke" / "edition.json" in read
    assert all(p.is_relative_to(tmp_path / "elsewhere") for p in read if p.name != "edition.json")
    read = reuse.step_inputs(findings, tmp_path, ["vit"], overrides, ["smoke", "speed"])
    for profile in ("smoke", "speed"):
        assert tmp_path / "elsewhere" / profile / "study_projection.json" in read
    assert all(p.is_relative_to(tmp_path / "elsewhere") for p in read)
    # without the override: under results/
    assert tmp_path / "results" / "smoke" / "study_projection.json" in reuse.step_inputs(
        findings, tmp_path, ["vit"], {}, ["smoke"])


def test_force_reruns_everything_and_retrains(tmp_path):
    _tiny_study(tmp_path)
    kwargs = dict(profile="smoke", encoders=["vit"], book=False, root=tmp_path, log=lambda _: None)
    study.run_study(**kwargs)
    forced = study.run_study(**kwargs, force=True)
    assert [s[1] for s in forced["steps"]] == ["executed"] * 6
    nb = nbformat.read(tmp_path / "book" / "executed" / "smoke" / "vit" / "02_train.ipynb", as_version=4)
    assert nb.metadata["papermill"]["parameters"]["resume"] is False
    # resume is not part of the fingerprint: the next plain run reuses the forced one
    again = study.run_study(**kwargs)
    assert [s[1] for s in again["steps"]] == ["reused"] * 6


def _record_an_edition(root: Path, profile: str = "speed", encoder: str = "vit") -> dict:
    """A recorded (GPU) edition as committed: its executed setup and per-encoder notebooks, edition.json,
    and the run folder's small files."""
    base = root / "book" / "recorded" / profile
    _notebook(base / "01_setup.ipynb", "print('recorded on a GPU')")
    for nb in notebooks.PER_ENCODER:
        _notebook(base / encoder / f"{nb}.ipynb", "print('recorded on a GPU')")
    results.write_json(base / "edition.json", {"profile": profile, "encoders": [encoder],
                                               "provenance": {"gpu_name": "NVIDIA H200", "date_utc": "2026-11-28T23:00:00"}})
    run = root / "results" / profile / encoder
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"accuracy": 0.001}')
    return {p: p.read_bytes() for p in base.rglob("*.ipynb")}


def test_a_recorded_edition_is_in_the_book_as_executed_and_never_run_without_a_gpu(tmp_path, monkeypatch):
    _tiny_study(tmp_path)
    recorded = _record_an_edition(tmp_path)
    lines: list[str] = []
    report = study.run_study("smoke", ["vit"], book=False, root=tmp_path, log=lines.append)
    statuses = _statuses(report)
    # its discussion reads only run files, so it is made here; its GPU notebooks are untouched
    assert statuses["speed: 05_discussion"] == "executed" and statuses["00_findings"] == "executed"
    assert not any("speed: 02_train" in line for line in lines)
    assert {p: p.read_bytes() for p in recorded} == recorded
    findings = nbformat.read(tmp_path / "book" / "executed" / "00_findings.ipynb", 4)
    assert findings.metadata["papermill"]["parameters"]["editions"] == ["smoke", "speed"]
    toc = book.toc_text({"smoke": ["vit"], **study.recorded_editions(tmp_path, exclude=["smoke"])}, tmp_path)
    assert "file: book/recorded/speed/vit/02_train" in toc and "file: book/executed/speed/05_discussion" in toc
    assert toc.index("book/executed/00_findings") < toc.index("book/executed/smoke/01_setup")
    assert "Edition speed: NVIDIA H200, random weights (recorded 2026-11-28)" in toc
    # the speed profile itself needs CUDA: on this machine it is refused before anything runs
    monkeypatch.setattr(study, "cuda_available", lambda: False)
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        study.run_study("speed", ["vit"], book=False, root=tmp_path, log=lambda _: None)


@pytest.mark.slow
def test_encoders_in_parallel_processes_and_a_failing_one_named(tmp_path):
    """--gpus: each encoder's chain in its own process (here two CPU processes standing in for GPUs); the
    lines name encoder and device; a failing chain is named while the other finishes."""
    _tiny_study(tmp_path)
    lines: list[str] = []
    report = study.run_study("smoke", ["swin", "vit"], book=False, root=tmp_path, log=lines.append, gpus=["cpu", "cpu"])
    statuses = _statuses(report)
    for encoder in ("swin", "vit"):
        for nb in notebooks.PER_ENCODER:
            assert statuses[f"smoke: {nb} [{encoder}]"] == "executed"
        assert any(line.startswith(f"[{encoder} on gpu cpu]") and "done in" in line for line in lines)
    assert statuses["smoke: 05_discussion"] == "executed" and report["failed"] == []

    (tmp_path / "FAIL_VIT").write_text("")
    lines.clear()
    with pytest.raises(study.StudyStepError, match="vit") as info:
        study.run_study("smoke", ["swin", "vit"], book=False, root=tmp_path, log=lines.append, gpus=["cpu", "cpu"],
                        force=True)
    assert "swin" not in str(info.value).split("failed:")[1].split("(")[0]
    assert any(line.startswith("[launch] vit on gpu cpu: FAILED") for line in lines)
    swin_train = nbformat.read(tmp_path / "book" / "executed" / "smoke" / "swin" / "04_benchmark.ipynb", 4)
    assert swin_train.metadata["papermill"]["end_time"]  # swin's chain finished
    with pytest.raises(ValueError, match="--gpus: 1 entries for 2 encoders"):
        study.run_study("smoke", ["swin", "vit"], book=False, root=tmp_path, log=lambda _: None, gpus=["0"])


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
    from mvlip_utils.models.towers import architecture
    from mvlip_utils.train.run_folder import RunMismatchError

    config = get_config("smoke", encoder="vit", results_dir=str(tmp_path), epochs=2)
    run = results.run_dir(config)
    assert not run_folder.reusable_run(config)  # nothing there: train
    tower = architecture("vit", "smoke", config.image_size)
    counts = {"n_val": 2, "n_classes": 2}
    results.write_history(run, [{c: 0.5 for c in results.HISTORY_COLUMNS} | {"epoch": e} for e in (1, 2)])
    results.write_json(run / "metrics.json", {"accuracy": 0.5, "epochs": 2, **counts})
    for name in ("predictions.csv", "per_class.csv", "confusion.csv"):
        pd.DataFrame({"x": [0, 1]}).to_csv(run / name, index=False)
    results.write_json(run / "config.json", {**config.to_dict(), "device": "cuda", "note": "other",
                                             "architecture": tower, **counts})
    assert run_folder.reusable_run(config)  # device and note do not matter
    # a finished run of other parameters, epochs included, is refused (never retrained, extended or relabelled)
    with pytest.raises(RunMismatchError, match=r"lr 0.001 \(saved\) vs 0.0003 \(now\)"):
        run_folder.reusable_run(config.replace(lr=3e-4))
    with pytest.raises(RunMismatchError, match=r"a finished 2-epoch run.*epochs 2 \(saved\) vs 3 \(now\)"):
        run_folder.reusable_run(config.replace(epochs=3))
    # a run made with another smoke architecture of the same encoder (the code changed) is refused too
    other = {**tower, "overrides": {**tower["overrides"], "depth": 3}}
    results.write_json(run / "config.json", {**config.to_dict(), "architecture": other, **counts})
    with pytest.raises(RunMismatchError, match="another vit tower"):
        run_folder.reusable_run(config)


# ------------------------------------------------------------------------------------ book build
def test_book_build_treats_warnings_as_errors(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "_config.yml").write_text((ROOT / "_config.yml").read_text())
    (tmp_path / "book" / "intro.md").write_text("# Intro\n\nSee {ref}`no-such-label`.\n")
    toc = book.write_toc(tmp_path / "toc.yml", {}, tmp_path)
    toc.write_text("format: jb-book\nroot: book/intro\n")
    with pytest.raises(RuntimeError, match="warnings are errors") as info:
        book.build_book(tmp_path, toc, log=lambda _: None)
    assert "no-such-label" in str(info.value)
    (tmp_path / "book" / "intro.md").write_text("# Intro\n\nNothing to warn about.\n")
    # pages outside the table of contents (hidden folders included) stay out of the build
    for stray in (".pytest_cache/README.md", "notes.md", "results/smoke/vit/readme.md"):
        (tmp_path / stray).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / stray).write_text("# Not a chapter\n")
    html = book.build_book(tmp_path, toc, log=lambda _: None)
    assert (html / "book" / "intro.html").is_file()


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter_with_its_help(path):
    """papermill's parser skips a line with a second '=' (in its help text, say) with a warning."""
    from papermill.translators import PythonTranslator

    source = params.parameters_cell_source(path.stem)
    parsed = PythonTranslator.inspect({"source": source})
    assert [p.name for p in parsed] == study.notebook_parameters(path)
    assert all(p.help for p in parsed)


def test_the_edition_record_says_how_the_chains_used_the_gpus(tmp_path):
    steps = [("speed: 02_train [vit]", "executed", 12.34), ("speed: 02_train [swin]", "executed", 20.0)]
    parallel = results.read_json(study.write_edition_record(tmp_path, "speed", ["vit", "swin"], steps, ["0", "1"]))
    assert parallel["chain_gpus"] == ["0", "1"] and parallel["encoders"] == ["vit", "swin"]
    assert parallel["steps"][0] == {"step": "speed: 02_train [vit]", "status": "executed", "seconds": 12.3}
    assert "git_commit" in parallel["provenance"] and "gpus" in parallel["provenance"]
    in_turn = results.read_json(study.write_edition_record(tmp_path, "speed", ["vit", "swin"], steps))
    assert in_turn["chain_gpus"] is None
