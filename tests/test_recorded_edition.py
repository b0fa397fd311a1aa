"""A recorded GPU edition (book/recorded/<profile>/) is the record of notebooks/ as they are: each executed
chapter's code cells are its notebook's (papermill's injected parameters aside) and its cells line up with the
notebook's one for one, so that the book shows it with the notebook's prose (``book.book_copy``); it ran to the
end; edition.json names the commit it ran at (a commit of this repository's history), its GPUs and its seeds;
and each of those seeds' runs is a finished run folder under results/<profile>/<encoder>/seed-<seed>/. A
chapter recorded from other notebooks (an older commit's) fails here: record the edition again (README,
"Reproduce the paper")."""

import json
import subprocess
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT
from nbformat.v4 import new_code_cell, new_markdown_cell

from mvlip_utils.settings.notebooks import PER_ENCODER, SETUP, Step, edition_record_path
from mvlip_utils.study import book
from mvlip_utils.study.runner import recorded_editions
from mvlip_utils.train import run_folder

BOOK = ROOT / "book"
EDITIONS = recorded_editions(ROOT)


def recorded_chapters(profile: str, encoders: list[str]) -> list[Step]:
    return [Step(SETUP, None, profile)] + [Step(nb, e, profile) for e in encoders for nb in PER_ENCODER]


def differences(recorded: Path, source: Path) -> list[str]:
    """Where the recorded chapter departs from its notebook (empty when it is its record): its code cells, and
    the cells that must line up one for one for the book to take the notebook's prose."""
    ours, theirs = nbformat.read(recorded, as_version=4), nbformat.read(source, as_version=4)
    kept = [c for c in ours.cells if "injected-parameters" not in c.metadata.get("tags", [])]
    out = []
    if [c.cell_type for c in kept] != [c.cell_type for c in theirs.cells]:
        out.append(f"{len(kept)} cells recorded ({''.join(c.cell_type[0] for c in kept)}), {len(theirs.cells)} "
                   f"in {source.name} ({''.join(c.cell_type[0] for c in theirs.cells)})")
    a, b = book.code_cells(ours), book.code_cells(theirs)
    out += [f"code cell {i}: {x[:60]!r} recorded vs {y[:60]!r}" for i, (x, y) in enumerate(zip(a, b)) if x != y]
    if len(a) != len(b):
        out.append(f"{len(a)} code cells recorded, {len(b)} in {source.name}")
    return out


def test_the_comparison_finds_changed_code_and_ignores_the_injected_parameters_and_the_prose(tmp_path):
    source = ROOT / "notebooks" / "02_train.ipynb"
    nb = nbformat.read(source, as_version=4)
    injected = new_code_cell("profile = 'speed'")
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(2, injected)
    recorded = tmp_path / "02_train.ipynb"
    nbformat.write(nb, recorded)
    assert differences(recorded, source) == []
    nb.cells[0].source = "# Older prose\n"  # the book takes the notebook's prose
    nbformat.write(nb, recorded)
    assert differences(recorded, source) == []
    code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and i > 2)
    nb.cells[code].source = "x = 1"
    nbformat.write(nb, recorded)
    assert [d.split(":")[0] for d in differences(recorded, source)] == ["code cell 1"]
    nb.cells[code].source = nbformat.read(source, as_version=4).cells[code - 1].source
    nb.cells.insert(code, new_markdown_cell("A paragraph the notebook no longer has."))
    nbformat.write(nb, recorded)
    assert differences(recorded, source)[0].startswith(f"{len(nb.cells) - 1} cells recorded")
    assert differences(tmp_path / "02_train.ipynb", ROOT / "notebooks" / "03_evaluate.ipynb")


def test_a_recorded_edition_is_there():
    assert EDITIONS, "no recorded edition under book/recorded/ (the speed edition is committed there)"


@pytest.mark.parametrize("profile", sorted(EDITIONS))
def test_every_recorded_chapter_is_its_notebook_as_it_is_now(profile, tmp_path):
    problems = {}
    for step in recorded_chapters(profile, EDITIONS[profile]):
        source = ROOT / "notebooks" / f"{step.notebook}.ipynb"
        diff = differences(step.output(BOOK), source)
        if diff:
            problems[str(step.output(BOOK).relative_to(ROOT))] = diff[:3]
            continue
        # the book's copy shows the notebook's prose under the chapter's title, the recorded outputs
        copy = nbformat.read(book.book_copy(step.output(BOOK), source, tmp_path / f"{step.label}.ipynb", step.title), 4)
        prose = [c.source for c in nbformat.read(source, 4).cells if c.cell_type == "markdown"]
        assert [c.source for c in copy.cells if c.cell_type == "markdown"][1:] == prose[1:]
        assert copy.cells[0].source.startswith(f"# {step.title}")
    assert not problems, f"recorded from other notebooks than notebooks/: {problems}"


@pytest.mark.parametrize("profile", sorted(EDITIONS))
def test_every_recorded_chapter_ran_to_its_end(profile):
    for step in recorded_chapters(profile, EDITIONS[profile]):
        nb = nbformat.read(step.output(BOOK), as_version=4)
        papermill = nb.metadata.get("papermill", {})
        assert papermill.get("end_time") and not papermill.get("exception"), step.label
        assert papermill["parameters"]["profile"] == profile


@pytest.mark.parametrize("profile", sorted(EDITIONS))
def test_the_edition_names_a_commit_of_this_history_its_gpus_and_its_seeds(profile):
    record = json.loads(edition_record_path(BOOK, profile).read_text())
    prov = record["provenance"]
    commit = prov["git_commit"]
    assert len(commit) == 40 and all(ch in "0123456789abcdef" for ch in commit), commit  # never "HEAD"
    assert prov["git_dirty"] is False and prov["gpus"] and prov["driver"] and prov["versions"]["torch"]
    assert set(record["encoders"]) == set(EDITIONS[profile])
    assert record.get("seeds"), "edition.json does not say which seeds ran (recorded before seeds existed)"
    assert [s["step"] for s in record["steps"]] == [s.label for s in recorded_chapters(profile, record["encoders"])]
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
    if known.returncode != 0 and subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--is-shallow-repository"],
                                                capture_output=True, text=True).stdout.strip() != "false":
        pytest.skip("no full git history here to look the commit up in")
    assert known.returncode == 0, f"{commit} is not a commit of this repository"


@pytest.mark.parametrize("profile", sorted(EDITIONS))
def test_the_editions_runs_are_finished_run_folders_of_its_seeds(profile):
    record = json.loads(edition_record_path(BOOK, profile).read_text())
    states = {(encoder, seed): run_folder.run_state(ROOT / "results" / profile / encoder / f"seed-{seed}")
              for encoder in record["encoders"] for seed in record.get("seeds") or [0]}
    unfinished = {k: v for k, v in states.items() if v[0] != "finished"}
    assert not unfinished, f"runs of the recorded edition that are not finished run folders: {unfinished}"
    runs, absent = run_folder.load_edition(ROOT / "results", profile, record["encoders"], record.get("seeds"))
    assert not absent and all(len(entry["runs"]) == len(record["seeds"]) for entry in runs.values())
    for encoder, entry in runs.items():
        assert entry["benchmark"] is not None, f"{encoder}: no benchmark.json"


def test_the_readmes_figures_of_the_speed_edition_are_the_editions():
    """The README's projection of the paper's study and the recording it names come from the recorded files."""
    readme = (ROOT / "README.md").read_text()
    projection = json.loads((ROOT / "results" / "speed" / "study_projection.json").read_text())
    record = json.loads(edition_record_path(BOOK, "speed").read_text())
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:4]]
            for line in readme.splitlines() if line.startswith("| 1 seed |") or line.startswith("| 3 seeds")}
    assert rows["1 seed"][0] == f"{projection['one_gpu_minutes']:.0f} min"
    assert rows["1 seed"][1].startswith(f"{projection['one_gpu_per_encoder_minutes']:.0f} min")
    three = next(v for k, v in rows.items() if k.startswith("3 seeds"))
    assert projection["seeds"] == 3
    assert three[0] == f"{projection['one_gpu_seeds_minutes']:.0f} min"
    assert three[1].startswith(f"{projection['one_gpu_per_encoder_seeds_minutes']:.0f} min")
    commit, date = record["provenance"]["git_commit"][:7], record["provenance"]["date_utc"][:10]
    assert f"recorded at {commit} on {date}" in " ".join(readme.split())
