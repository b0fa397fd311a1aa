"""A recorded GPU edition (book/recorded/<profile>/) is the record of notebooks/ as they are: each executed
chapter's cells are its notebook's cells, papermill's injected parameters cell aside, and edition.json names
the commit it ran at, a commit of this repository's history with its provenance. A chapter recorded from
other notebooks (an older commit's) fails here: record the edition again (README, "Reproduce the paper")."""

import json
import subprocess
from pathlib import Path

import pytest

from mvlip_utils.settings.notebooks import PER_ENCODER, SETUP, Step, edition_record_path
from mvlip_utils.study.runner import recorded_editions

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
EDITIONS = recorded_editions(ROOT)


def cells_without_injected_parameters(path: Path) -> list[tuple[str, str]]:
    """(cell type, source) of every cell of the notebook at ``path`` but papermill's injected parameters."""
    cells = json.loads(path.read_text())["cells"]
    return [(c["cell_type"], "".join(c["source"])) for c in cells
            if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]


def recorded_chapters(profile: str, encoders: list[str]) -> list[Step]:
    return [Step(SETUP, None, profile)] + [Step(nb, e, profile) for e in encoders for nb in PER_ENCODER]


def differences(recorded: Path, source: Path) -> list[str]:
    """Where the recorded chapter's cells differ from its notebook's (empty when they are the same)."""
    ours, theirs = cells_without_injected_parameters(recorded), cells_without_injected_parameters(source)
    out = [f"{len(ours)} cells recorded, {len(theirs)} in {source.name}"] if len(ours) != len(theirs) else []
    out += [f"cell {i}: {a[1][:60]!r} recorded vs {b[1][:60]!r}" for i, (a, b) in enumerate(zip(ours, theirs))
            if a != b]
    return out


def test_the_comparison_finds_a_changed_cell_and_ignores_the_injected_parameters(tmp_path):
    source = ROOT / "notebooks" / "02_train.ipynb"
    nb = json.loads(source.read_text())
    injected = {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]}, "source": ["profile = 'speed'\n"],
                "outputs": [], "execution_count": 2}
    nb["cells"].insert(2, injected)
    recorded = tmp_path / "02_train.ipynb"
    recorded.write_text(json.dumps(nb))
    assert differences(recorded, source) == []
    code = next(i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and i > 2)
    nb["cells"][code]["source"] = ["x = 1\n"]
    recorded.write_text(json.dumps(nb))
    assert [d.split(":")[0] for d in differences(recorded, source)] == [f"cell {code - 1}"]


@pytest.mark.parametrize("profile", sorted(EDITIONS))
def test_every_recorded_chapter_is_its_notebook_as_it_is_now(profile):
    problems = {}
    for step in recorded_chapters(profile, EDITIONS[profile]):
        diff = differences(step.output(BOOK), ROOT / "notebooks" / f"{step.notebook}.ipynb")
        if diff:
            problems[str(step.output(BOOK).relative_to(ROOT))] = diff[:3]
    assert not problems, f"recorded from other notebooks than notebooks/: {problems}"


@pytest.mark.parametrize("profile", sorted(EDITIONS))
def test_the_edition_names_a_commit_of_this_history_and_its_gpus(profile):
    record = json.loads(edition_record_path(BOOK, profile).read_text())
    prov = record["provenance"]
    commit = prov["git_commit"]
    assert len(commit) == 40 and all(ch in "0123456789abcdef" for ch in commit), commit  # never "HEAD"
    assert prov["git_dirty"] is False and prov["gpus"] and prov["driver"] and prov["versions"]["torch"]
    assert set(record["encoders"]) == set(EDITIONS[profile])
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
    if known.returncode != 0 and subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--is-shallow-repository"],
                                                capture_output=True, text=True).stdout.strip() != "false":
        pytest.skip("no full git history here to look the commit up in")
    assert known.returncode == 0, f"{commit} is not a commit of this repository"
