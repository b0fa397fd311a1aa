"""The study (mvlip_utils.study): notebook hygiene, editions and their chapters as the book shows them, failure
messages, and reuse, checked on the session's smoke study (conftest's ``smoke_study``) wherever a real study
is needed, so that it is executed once per test run."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, STUDY_ENCODERS, TINY, chapter, fake_study, write_notebook
from nbformat.v4 import new_code_cell, new_markdown_cell, new_output

from mvlip_utils.settings import notebooks, params
from mvlip_utils.settings.notebooks import FINDINGS, NOTEBOOKS, PER_ENCODER, Step, plan
from mvlip_utils.settings.profiles import ENCODERS, PROFILES
from mvlip_utils.study import book, reuse
from mvlip_utils.study import runner as study

NOTEBOOK_FILES = sorted((ROOT / "notebooks").glob("*.ipynb"))


# ------------------------------------------------------------------------------- notebook hygiene
def test_the_six_notebooks_are_there():
    assert [p.stem for p in NOTEBOOK_FILES] == list(NOTEBOOKS)


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
    if path.stem != FINDINGS:
        missing = set(params.parameter_names()) - set(names) - ({"encoder"} if path.stem not in PER_ENCODER else set())
        assert not missing, f"{path.name}: parameters cell lacks {sorted(missing)}"
    assert ("encoder" in names) == (path.stem in PER_ENCODER) and ("encoders" in names) != (path.stem in PER_ENCODER)
    values = {t.id: ast.literal_eval(n.value) for n in ast.parse(nb.cells[tagged[0]].source).body
              if isinstance(n, ast.Assign) for t in n.targets}
    assert values.get("profile", "smoke") == "smoke"
    assert all(values[f] is None for f in params.parameter_names() if f in values and f not in ("profile", "encoder"))


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_papermill_reads_every_parameter_with_its_help(path):
    """papermill's parser skips a line with a second '=' (in its help text, say) with a warning."""
    from papermill.translators import PythonTranslator

    parsed = PythonTranslator.inspect({"source": params.parameters_cell_source(path.stem)})
    assert [p.name for p in parsed] == study.notebook_parameters(path)
    assert all(p.help for p in parsed)


@pytest.mark.parametrize("path", NOTEBOOK_FILES, ids=lambda p: p.stem)
def test_every_code_cell_is_folded_or_shows_only_its_output(path):
    """The HTML reader sees prose, tables and figures; code is one click away (hide-input) or, for cells
    that only render, left out of the HTML (remove-input or remove-cell); JupyterLab shows every cell."""
    nb = nbformat.read(path, as_version=4)
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert {"hide-input", "remove-input", "remove-cell"} & set(cell.metadata.get("tags", [])), \
                f"{path.name} cell {index}"


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


# ---------------------------------------------------------------------------- plan, titles, parameters
def test_plan_runs_setup_once_each_encoder_then_discussion():
    steps = plan(["swin", "vit"])
    assert [s.label for s in steps] == [
        "smoke: 01_setup", "smoke: 02_train [swin]", "smoke: 03_evaluate [swin]", "smoke: 04_benchmark [swin]",
        "smoke: 02_train [vit]", "smoke: 03_evaluate [vit]", "smoke: 04_benchmark [vit]", "smoke: 05_discussion"]
    assert steps[1].output(Path("book")) == Path("book/executed/smoke/swin/02_train.ipynb")
    # a GPU profile's edition is recorded (committed as executed), its discussion rebuilt wherever the book is;
    # the book shows a copy of each recorded chapter under book/executed/
    speed = plan(["vit"], "speed")
    assert speed[0].output(Path("book")) == Path("book/recorded/speed/01_setup.ipynb")
    assert speed[1].output(Path("book")) == Path("book/recorded/speed/vit/02_train.ipynb")
    assert speed[1].book_path(Path("book")) == Path("book/executed/speed/vit/02_train.ipynb")
    assert speed[-1].output(Path("book")) == Path("book/executed/speed/05_discussion.ipynb")
    assert Step(FINDINGS).output(Path("book")) == Path("book/executed/00_findings.ipynb")
    assert notebooks.edition_record_path(Path("book"), "speed") == Path("book/recorded/speed/edition.json")
    assert notebooks.edition_record_path(Path("book"), "smoke") == Path("book/executed/smoke/edition.json")


def test_every_chapter_of_every_edition_has_a_title_of_its_own():
    steps = [Step(FINDINGS)] + [s for profile in PROFILES for s in plan([*ENCODERS, "convnext_atto"], profile)]
    titles = [s.title for s in steps]
    assert len(set(titles)) == len(titles), [t for t in titles if titles.count(t) > 1]
    assert Step(notebooks.TRAIN, "mambavision", "smoke").title == "MVLIP (tiny MambaVision): training, smoke edition"
    assert Step(notebooks.EVALUATE, "swin", "speed").title == "CLIP(Swin) (Swin-B): zero-shot evaluation, speed edition"


def test_parse_overrides_types_values_and_rejects_bad_pairs():
    got = study.parse_overrides(["epochs=2", "lr=1e-4", "pretrained=true", "data=/x/imagenet-mini",
                                 "image_weights=None", "resolutions=[64, 128]", "seeds=[0, 1]"])
    assert got == {"epochs": 2, "lr": 1e-4, "pretrained": True, "data": "/x/imagenet-mini",
                   "image_weights": None, "resolutions": [64, 128], "seeds": [0, 1]}
    with pytest.raises(ValueError, match="key=value"):
        study.parse_overrides(["epochs"])


def test_check_overrides_names_the_bad_parameter():
    with pytest.raises(ValueError, match="epoch"):
        study.check_overrides("smoke", ["vit"], {"epoch": 2})
    with pytest.raises(ValueError, match="precision"):
        study.check_overrides("smoke", ["vit"], {"precision": "fp8"})
    with pytest.raises(ValueError, match="seeds"):
        study.check_overrides("smoke", ["vit"], {"seeds": [0, 0]})
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
    train, setup = Step(notebooks.TRAIN, "swin"), Step(notebooks.SETUP)
    overrides = {"epochs": 1, "repeats": 2}
    assert study.step_parameters(train, ["swin"], overrides, ["profile", "encoder", "epochs"]) == {
        "profile": "smoke", "epochs": 1, "encoder": "swin"}
    assert study.step_parameters(setup, ["swin", "vit"], overrides, ["epochs"]) == {
        "profile": "smoke", "epochs": 1, "encoders": ["swin", "vit"]}
    assert study.step_parameters(train, ["swin"], {}, [], force=True)["resume"] is False
    findings = study.step_parameters(Step(FINDINGS), ["vit"], {"results_dir": "r"}, ["results_dir"])
    assert findings == {"results_dir": "r", "encoders": ["vit"]}  # every edition: no profile


def test_kernel_runs_this_interpreter():
    import os
    import sys

    from jupyter_client.kernelspec import KernelSpecManager

    name = study.kernel_for_this_python()
    argv0 = KernelSpecManager().get_kernel_spec(name).argv[0]
    assert argv0 in {"python", "python3"} or os.path.abspath(argv0) == os.path.abspath(sys.executable)


# ----------------------------------------------------------------------------- the chapters in the book
def glue_output(name: str, value) -> dict:
    """A code cell output as MyST-NB's glue leaves it in an executed notebook."""
    out = new_output("display_data", data={"application/papermill.record/text/plain": repr(value)},
                     metadata={"scrapbook": {"name": name, "mime_prefix": "application/papermill.record/"}})
    return out


def tagged(cell, *tags):
    cell.metadata["tags"] = list(tags)
    return cell


def test_a_chapter_keeps_the_sections_its_glued_flags_ask_for_under_its_own_title():
    code = new_code_cell("show.glue(gpu=False, random_weights=True)")
    code.outputs = [glue_output("gpu", False), glue_output("random_weights", True)]
    injected = tagged(new_code_cell("profile = 'speed'"), "injected-parameters")
    nb = chapter(new_markdown_cell("# Discussion\n\nIntro."), injected, code,
                 tagged(new_markdown_cell("## Projection"), "if-gpu"),
                 tagged(new_markdown_cell("No GPU here."), "if-not-gpu"),
                 tagged(new_markdown_cell("Random weights."), "if-random_weights"),
                 tagged(new_markdown_cell("GPU and random."), "if-gpu", "if-random_weights"),
                 tagged(new_markdown_cell("Unknown flag."), "if-never_glued"),
                 tagged(new_code_cell("x = 1"), "remove-cell", "if-gpu"))
    book.prepare_chapter(nb, "Discussion of the speed edition")
    assert book.glued(nb) == {"gpu": "False", "random_weights": "True"}
    assert nb.cells[0].source == "# Discussion of the speed edition\n\nIntro."
    assert "hide-input" in nb.cells[1].metadata.tags
    removed = ["remove-cell" in c.metadata.get("tags", []) for c in nb.cells[3:]]
    assert removed == [True, False, False, True, True, True]
    assert nb.cells[8].metadata.tags.count("remove-cell") == 1


def test_a_recorded_chapter_takes_its_prose_from_the_notebook_when_its_code_is_the_notebooks(tmp_path):
    source = chapter(new_markdown_cell("# Training\n\nNew prose."), tagged(new_code_cell("x = 1"), "hide-input"),
                     tagged(new_markdown_cell("Only on a GPU."), "if-gpu"))
    recorded = chapter(new_markdown_cell("# Training\n\nOld prose."),
                       tagged(new_code_cell("profile = 'speed'"), "injected-parameters"),
                       new_code_cell("x = 1"), new_markdown_cell("Only on a GPU."))
    recorded.cells[2].outputs = [glue_output("gpu", True)]
    nbformat.write(source, tmp_path / "source.ipynb")
    nbformat.write(recorded, tmp_path / "recorded.ipynb")
    out = book.book_copy(tmp_path / "recorded.ipynb", tmp_path / "source.ipynb", tmp_path / "out" / "copy.ipynb",
                         "MVLIP: training, speed edition")
    copy = nbformat.read(out, as_version=4)
    assert copy.cells[0].source == "# MVLIP: training, speed edition\n\nNew prose."
    assert copy.cells[2].outputs == recorded.cells[2].outputs  # what ran stays what ran
    assert "hide-input" in copy.cells[2].metadata.tags and "remove-cell" not in copy.cells[3].metadata.tags
    # recorded from other code: shown as recorded, never with prose that describes other code
    recorded.cells[2].source = "x = 2"
    nbformat.write(recorded, tmp_path / "recorded.ipynb")
    copy = nbformat.read(book.book_copy(tmp_path / "recorded.ipynb", tmp_path / "source.ipynb",
                                        tmp_path / "out" / "copy.ipynb", "T"), as_version=4)
    assert copy.cells[0].source == "# T\n\nOld prose."
    assert nbformat.read(tmp_path / "recorded.ipynb", as_version=4).cells[0].source == "# Training\n\nOld prose."


def test_the_edition_record_says_how_the_chains_used_the_gpus(tmp_path):
    for step in plan(["vit"], "smoke")[:2]:
        nb = chapter(new_markdown_cell("# x"))
        nb.metadata["mvlip"] = {"seconds": 12.5}
        step.output(tmp_path / "book").parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, step.output(tmp_path / "book"))
    path = book.write_edition_record(tmp_path, "smoke", ["vit"], [0, 1], ["0"])
    record = json.loads(path.read_text())
    assert path == tmp_path / "book" / "executed" / "smoke" / "edition.json"
    assert record["chain_gpus"] == ["0"] and record["seeds"] == [0, 1] and record["encoders"] == ["vit"]
    assert record["steps"] == [{"step": "smoke: 01_setup", "seconds": 12.5},
                               {"step": "smoke: 02_train [vit]", "seconds": 12.5},
                               {"step": "smoke: 03_evaluate [vit]", "seconds": None},
                               {"step": "smoke: 04_benchmark [vit]", "seconds": None}]  # not the discussion's
    assert record["provenance"]["git_commit"] is not None and "versions" in record["provenance"]
    # unchanged: left as it is (what reads it is reused); changed: written
    written = path.read_bytes()
    book.write_edition_record(tmp_path, "smoke", ["vit"], [0, 1], ["0"])
    assert path.read_bytes() == written
    in_turn = json.loads(book.write_edition_record(tmp_path, "smoke", ["vit"], [0, 1]).read_text())
    assert in_turn["chain_gpus"] is None


def test_the_toc_names_every_chapter_by_its_title_findings_first():
    editions = {"smoke": ["mambavision", "swin"], **study.recorded_editions(ROOT, exclude=["smoke"])}
    assert editions.get("speed") == list(ENCODERS)  # the committed recorded edition
    toc = book.toc_text(editions, ROOT)
    assert toc.index("book/executed/00_findings") < toc.index("book/executed/smoke/01_setup")
    for profile, encoders in editions.items():
        for step in plan(encoders, profile):
            assert f"title: \"{step.title}\"" in toc
    assert "file: book/executed/speed/vit/02_train" in toc and "book/recorded/" not in toc
    recorded = json.loads(notebooks.edition_record_path(ROOT / "book", "speed").read_text())["provenance"]["date_utc"][:10]
    assert f"Edition speed: NVIDIA H200, random weights (recorded {recorded})" in toc
    assert "Edition smoke: CPU, random weights" in toc


# ------------------------------------------------------------------------------------ the session study
def test_the_session_study_executed_every_chapter_once_with_its_fingerprint(smoke_study):
    report, root = smoke_study["report"], smoke_study["root"]
    # the smoke chapters, the recorded speed edition's discussion (its chapters are copied, never run), findings
    steps = plan(STUDY_ENCODERS) + [Step(notebooks.DISCUSSION, None, "speed"), Step(FINDINGS)]
    assert sorted(label for label, _, _ in report["steps"]) == sorted(s.label for s in steps)
    assert {status for _, status, _ in report["steps"]} == {"executed"} and report["failed"] == []
    for step in steps:
        nb = nbformat.read(step.output(root / "book"), as_version=4)
        assert nb.metadata["mvlip"]["fingerprint"] and nb.metadata["mvlip"]["step"] == step.label
        assert not nb.metadata["papermill"]["exception"] and nb.metadata["papermill"]["end_time"]
    findings_nb = nbformat.read(Step(FINDINGS).output(root / "book"), as_version=4)
    assert findings_nb.metadata["papermill"]["parameters"]["editions"] == ["smoke", "speed"]
    # the chains ran in two processes, as their lines say
    for encoder in STUDY_ENCODERS:
        assert any(line.startswith(f"[{encoder} on gpu cpu]") and "done in" in line for line in smoke_study["lines"])
    record = json.loads(notebooks.edition_record_path(root / "book", "smoke").read_text())
    assert record["seeds"] == TINY["seeds"] and record["chain_gpus"] == ["cpu", "cpu"]
    assert [s["step"] for s in record["steps"]] == [s.label for s in plan(STUDY_ENCODERS)[:-1]]
    assert all(s["seconds"] > 0 for s in record["steps"])


def test_every_section_flag_a_chapter_names_is_glued(smoke_study):
    """A cell tagged if-<flag> whose flag no code glued would vanish from the book without a word: every
    condition is glued True or False, unless another condition of the same cell already hides it."""
    root = smoke_study["root"]
    for step in plan(STUDY_ENCODERS) + [Step(FINDINGS)]:
        nb = nbformat.read(step.output(root / "book"), as_version=4)
        flags = book.glued(nb)
        for index, cell in enumerate(nb.cells):
            conditions = [t for t in cell.metadata.get("tags", []) if t.startswith("if-")]
            state = {t: flags.get(t[len("if-not-"):] if t.startswith("if-not-") else t[3:]) for t in conditions}
            if any(v is None for v in state.values()):
                hidden = any((v == "True") if t.startswith("if-not-") else (v == "False") for t, v in state.items())
                assert hidden, f"{step.label} cell {index}: {state} (a flag that was never glued)"
    # a CPU edition's discussion leaves out the projection of the paper's study and keeps the random-weights box
    discussion = nbformat.read(Step(notebooks.DISCUSSION).output(root / "book"), as_version=4)
    for cell in discussion.cells:
        tags = cell.metadata.get("tags", [])
        if "if-gpu" in tags:
            assert "remove-cell" in tags, cell.source[:60]
        if "if-random_weights" in tags:
            assert "remove-cell" not in tags


def study_context(root: Path, force: bool = False, log=lambda _: None) -> study.StudyContext:
    """What ``run_study`` gives its steps, for the smoke study's overrides (TINY)."""
    sources = {nb: root / "notebooks" / f"{nb}.ipynb" for nb in NOTEBOOKS}
    return study.StudyContext(root, sources, {nb: study.notebook_parameters(p) for nb, p in sources.items()},
                              dict(TINY), study.kernel_for_this_python(), reuse.library_hash(), force, log)


def decisions(ctx: study.StudyContext, monkeypatch) -> dict[str, str]:
    """What run_study would do with each step of the session study (in turn), nothing executed: executing a
    step records it instead."""
    ran = []

    def record(step, source, output, parameters, *args, **kwargs):
        ran.append((step.label, parameters))
        return 0.0

    monkeypatch.setattr(study, "execute_step", record)
    out = {}
    for step in plan(STUDY_ENCODERS):
        out[step.label] = study.run_step(ctx, step, STUDY_ENCODERS)[1]
    out["00_findings"] = study.run_step(ctx, Step(FINDINGS), list(ENCODERS), ["smoke", "speed"])[1]
    return out


def test_the_study_again_reuses_everything_and_a_changed_run_file_reruns_only_what_reads_it(smoke_study, monkeypatch):
    root = smoke_study["root"]
    lines: list[str] = []
    again = study.run_study("smoke", STUDY_ENCODERS, overrides=dict(TINY), root=root, gpus=["cpu", "cpu"],
                            book=False, log=lines.append)
    assert [status for _, status, _ in again["steps"]] == ["reused"] * 10, again["steps"]  # speed's discussion too
    assert sum("reused (unchanged)" in line for line in lines) == 10
    assert any(line.startswith("[study] total") for line in lines)

    ctx = study_context(root)
    assert set(decisions(ctx, monkeypatch).values()) == {"reused"}
    changes = {
        # a seed's per-image results: that encoder's training and evaluation chapters, the discussion, the findings
        root / "results" / "smoke" / "swin" / "seed-1" / "per_image.csv.gz":
            ["smoke: 02_train [swin]", "smoke: 03_evaluate [swin]", "smoke: 05_discussion", "00_findings"],
        # an encoder's benchmark: its benchmark chapter (which wrote it), the discussion, the findings
        root / "results" / "smoke" / "mambavision" / "benchmark.json":
            ["smoke: 04_benchmark [mambavision]", "smoke: 05_discussion", "00_findings"],
        # the edition's record: the discussion and the findings only
        notebooks.edition_record_path(root / "book", "smoke"): ["smoke: 05_discussion", "00_findings"],
    }
    for path, dependents in changes.items():
        saved = path.read_bytes()
        try:
            path.write_bytes(saved + b" ")
            statuses = decisions(ctx, monkeypatch)
        finally:
            path.write_bytes(saved)
        assert [label for label, status in statuses.items() if status == "executed"] == dependents, path.name
    # forced: everything runs again, training from scratch
    ran = []
    monkeypatch.setattr(study, "execute_step", lambda step, source, output, parameters, *a, **k: ran.append(
        (step.label, parameters)) or 0.0)
    for step in plan(STUDY_ENCODERS):
        assert study.run_step(study_context(root, force=True), step, STUDY_ENCODERS)[1] == "executed"
    assert [p.get("resume") for label, p in ran if "02_train" in label] == [False, False]


def test_a_recorded_edition_is_in_the_book_as_executed_and_never_run_without_a_gpu(smoke_study, tmp_path,
                                                                                   monkeypatch):
    """The session study's root with the committed speed edition beside it: run_study (its notebooks' execution
    and the book build replaced by records) runs the speed edition's discussion, hands both editions to the
    findings, never touches the recorded chapters, and puts their copies in the table of contents."""
    root = tmp_path / "root"
    shutil.copytree(smoke_study["root"], root, ignore=shutil.ignore_patterns("_build", "checkpoint.pt", "data"))
    shutil.rmtree(root / "book" / "executed" / "speed")  # as before the speed edition's first book build
    recorded = {p: p.read_bytes() for p in (root / "book" / "recorded").rglob("*")  if p.is_file()}
    ran, lines = [], []
    monkeypatch.setattr(study, "execute_step", lambda step, source, output, parameters, *a, **k: ran.append(
        (step.label, parameters)) or 0.0)
    monkeypatch.setattr(study, "build_book", lambda root, toc, log: Path(root) / "book" / "_build" / "html")
    report = study.run_study("smoke", STUDY_ENCODERS, overrides=dict(TINY), root=root, log=lines.append)
    statuses = {label: status for label, status, _ in report["steps"]}
    # the smoke chapters are reused; its discussion runs again because its chains now ran in turn (its record
    # changed); the speed edition's discussion and the findings run
    assert [label for label, status in statuses.items() if status == "executed"] == [
        "smoke: 05_discussion", "speed: 05_discussion", "00_findings"]
    assert not any(label.startswith("speed:") and "05_discussion" not in label for label, _ in ran)
    params = dict(ran)
    assert params["speed: 05_discussion"]["profile"] == "speed"
    assert params["speed: 05_discussion"]["encoders"] == list(ENCODERS)
    assert params["00_findings"]["editions"] == ["smoke", "speed"]
    assert {p: p.read_bytes() for p in recorded} == recorded
    toc = (root / "book" / "executed" / "_toc.yml").read_text()
    assert toc == book.toc_text({"smoke": STUDY_ENCODERS, "speed": list(ENCODERS)}, root)
    for step in plan(ENCODERS, "speed")[:-1]:
        assert step.book_path(root / "book").is_file()  # the book's copy of each recorded chapter
    # the speed profile itself needs CUDA: on a machine without it, refused before anything runs
    monkeypatch.setattr(study, "cuda_available", lambda: False)
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        study.run_study("speed", ["vit"], book=False, root=root, log=lambda _: None)


# --------------------------------------------------------------------------------- failures, reuse rules
def test_failure_names_notebook_encoder_and_cell(tmp_path):
    source = write_notebook(tmp_path / "02_train.ipynb", "x = 1",
                            "values = {'a': 1}\nraise ValueError(f'boom: bad value {values}')\ny = 2")
    output = tmp_path / "out" / "02_train.ipynb"
    with pytest.raises(study.StudyStepError) as info:
        study.execute_step(Step(notebooks.TRAIN, "swin"), source, output, {"profile": "smoke", "encoder": "swin"},
                           study.kernel_for_this_python(), tmp_path, fp="x")
    message = str(info.value)
    assert "02_train.ipynb" in message and "'swin'" in message
    assert "cell 4" in message  # title, parameters, injected parameters, x = 1, the failing one (0-based: 4)
    assert "| raise ValueError(f'boom: bad value {values}')" in message
    assert "ValueError: boom: bad value {'a': 1}" in message
    assert str(output) in message
    assert (info.value.notebook, info.value.encoder, info.value.cell_index) == ("02_train", "swin", 4)
    assert "\x1b[" not in message  # no terminal colour codes


def test_cli_reports_a_failing_step_and_exits_nonzero(tmp_path, capsys):
    fake_study(tmp_path)
    code = study.main(["--root", str(tmp_path), "--encoders", "vit", "--no-book", "--gpus", "none"])
    err = capsys.readouterr().err
    assert code == 1
    assert "FAILED" in err and "01_setup.ipynb" in err and "RuntimeError: setup fails on purpose" in err
    assert study.main(["--root", str(tmp_path), "--encoders", "resnet", "--no-book"]) == 2  # one-line user error
    assert capsys.readouterr().err.startswith("error: --encoders")


@pytest.mark.slow
def test_a_failing_chain_is_named_while_the_others_finish(tmp_path):
    """--gpus: each encoder's chain in its own process (two CPU processes standing in for GPUs)."""
    fake_study(tmp_path)
    (tmp_path / "FAIL_VIT").write_text("")
    lines: list[str] = []
    ctx = study_context(tmp_path, log=lines.append)
    ctx.overrides = {}
    report, failed = study.run_chains_in_parallel(ctx, "smoke", ["swin", "vit"], ["cpu", "cpu"])
    assert failed == ["vit"]
    assert [(label, status) for label, status, _ in report] == [
        (f"smoke: {nb} [swin]", "executed") for nb in PER_ENCODER]
    assert any(line.startswith("[launch] vit on gpu cpu: FAILED") for line in lines)
    assert any(line.startswith("[vit on gpu cpu]") and "vit fails on purpose" in line for line in lines)
    assert nbformat.read(Step(notebooks.BENCHMARK, "swin").output(tmp_path / "book"), 4).metadata["papermill"]["end_time"]
    with pytest.raises(ValueError, match="--gpus: 1 entries for 2 encoders"):
        study.run_study("smoke", ["swin", "vit"], book=False, root=tmp_path, log=lambda _: None, gpus=["0"])


def test_fingerprint_follows_notebook_parameters_library_and_inputs(tmp_path):
    source = write_notebook(tmp_path / "02_train.ipynb", "x = 1")
    base = reuse.fingerprint(source, {"profile": "smoke", "encoder": "vit"}, "lib1")
    assert reuse.fingerprint(source, {"profile": "smoke", "encoder": "vit", "resume": False}, "lib1") == base
    assert reuse.fingerprint(source, {"profile": "smoke", "encoder": "swin"}, "lib1") != base
    assert reuse.fingerprint(source, {"profile": "smoke", "encoder": "vit"}, "lib2") != base
    assert reuse.fingerprint(source, {"profile": "smoke", "encoder": "vit"}, "lib1", "inputs") != base
    write_notebook(source, "x = 2")
    assert reuse.fingerprint(source, {"profile": "smoke", "encoder": "vit"}, "lib1") != base
    (tmp_path / "a.json").write_text("1")
    digest = reuse.files_digest([tmp_path / "a.json", tmp_path / "missing.json"], tmp_path)
    (tmp_path / "a.json").write_text("2")
    assert reuse.files_digest([tmp_path / "a.json", tmp_path / "missing.json"], tmp_path) != digest


def test_step_inputs_are_the_files_each_chapter_reads(tmp_path):
    overrides = {"results_dir": "elsewhere", "seeds": [0, 2]}
    train = reuse.step_inputs(Step(notebooks.TRAIN, "vit"), tmp_path, ["vit"], overrides)
    run = tmp_path / "elsewhere" / "smoke" / "vit"
    assert run / "seed-2" / "per_image.csv.gz" in train and run / "step_check.json" in train
    assert run / "seed-1" / "metrics.json" not in train and run / "benchmark.json" not in train
    assert run / "flops.json" not in train  # a cache the benchmark chapter writes after training ran
    assert reuse.step_inputs(Step(notebooks.BENCHMARK, "vit"), tmp_path, ["vit"], overrides) == [run / "benchmark.json"]
    assert reuse.step_inputs(Step(notebooks.SETUP), tmp_path, ["vit"], overrides) == []
    # the discussion: the edition's record and every file of the edition's runs (seeds found on disk)
    (run / "seed-2").mkdir(parents=True)
    read = reuse.step_inputs(Step(notebooks.DISCUSSION), tmp_path, ["vit"], overrides)
    assert tmp_path / "book" / "executed" / "smoke" / "edition.json" in read
    assert run / "seed-2" / "metrics.json" in read and run / "benchmark.json" in read
    assert all(p.is_relative_to(tmp_path / "elsewhere") for p in read if p.name != "edition.json")
    # the findings: every edition's files and projections
    read = reuse.step_inputs(Step(FINDINGS), tmp_path, ["vit"], overrides, ["smoke", "speed"])
    for profile in ("smoke", "speed"):
        assert tmp_path / "elsewhere" / profile / "study_projection.json" in read
    assert tmp_path / "book" / "recorded" / "speed" / "edition.json" in read
    assert tmp_path / "results" / "smoke" / "study_projection.json" in reuse.step_inputs(
        Step(FINDINGS), tmp_path, ["vit"], {}, ["smoke"])


# ------------------------------------------------------------------------------------ book build
def test_book_build_treats_warnings_as_errors(tmp_path):
    (tmp_path / "book").mkdir()
    (tmp_path / "_config.yml").write_text((ROOT / "_config.yml").read_text())
    (tmp_path / "book" / "intro.md").write_text("# Intro\n\nSee {ref}`no-such-label`.\n")
    toc = tmp_path / "toc.yml"
    toc.write_text("format: jb-book\nroot: book/intro\n")
    with pytest.raises(RuntimeError, match="warnings are errors") as info:
        book.build_book(tmp_path, toc, log=lambda _: None)
    assert "no-such-label" in str(info.value)
