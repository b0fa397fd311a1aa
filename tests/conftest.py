"""What many tests share, built once per test run (pytest's session scope): a tiny study executed through
papermill and built into the book, a tiny configuration, finished runs of it, and the helpers tests share."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from torch.overrides import TorchFunctionMode

ROOT = Path(__file__).resolve().parents[1]

# As small as the study gets: 4 classes x 8 training images of 32 px, two epochs, two seeds, a short benchmark
TINY = {"epochs": 2, "generated_classes": 4, "generated_train_per_class": 8, "generated_val_per_class": 4,
        "image_size": 32, "batch_size": 16, "eval_batch_size": 16, "seeds": [0, 1], "warmup": 1, "repeats": 1,
        "eval_repeats": 1, "resolutions": [32, 64], "step_check_images": 16, "step_profile_steps": 0, "best_batch": 8,
        "sweep_batch": 8, "n_examples": 4}
STUDY_ENCODERS = ["mambavision", "swin"]


def tiny_config(tmp_path, **overrides):
    """A StudyConfig of the smoke profile at the tiniest size, writing under ``tmp_path``."""
    from mvlip_utils.settings.profiles import get_config

    values = dict(encoder="vit", epochs=2, generated_classes=4, generated_train_per_class=16,
                  generated_val_per_class=4, batch_size=16, image_size=32, device="cpu", seeds=[0],
                  data_dir=str(tmp_path / "data"), results_dir=str(tmp_path / "results"))
    values.update(overrides)
    return get_config("smoke", **values)


def copy_book_sources(dest: Path, recorded: bool = False) -> Path:
    """The book's sources (config, introduction, notebooks, style) in a folder of their own, so that a test's
    data, results and build stay out of the repository; ``recorded``: with the recorded GPU editions (their
    chapters under book/recorded/ and their run files under results/), as `make book` builds them."""
    (dest / "book").mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "index.md"):
        shutil.copy(ROOT / name, dest / name)
    for name in ("notebooks", "_static"):
        shutil.copytree(ROOT / name, dest / name)
    if recorded and (ROOT / "book" / "recorded").is_dir():
        shutil.copytree(ROOT / "book" / "recorded", dest / "book" / "recorded")
        for profile in (p.name for p in (ROOT / "book" / "recorded").iterdir() if p.is_dir()):
            shutil.copytree(ROOT / "results" / profile, dest / "results" / profile)
    return dest


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this checkout first on the path."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", **extra}


def chapter(*cells) -> nbformat.NotebookNode:
    """A notebook of ``cells`` with a Python kernel."""
    nb = new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def write_notebook(path: Path, *cells: str, parameters: str = "profile = 'smoke'\nencoder = None") -> Path:
    """A chapter at ``path``: a title, its parameters cell, then one code cell per source in ``cells``."""
    first = new_code_cell(parameters)
    first.metadata["tags"] = ["parameters"]
    nb = chapter(new_markdown_cell("# A chapter"), first, *[new_code_cell(c) for c in cells])
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def fake_study(root: Path, setup: str = "raise RuntimeError('setup fails on purpose')", benchmark: str = "") -> None:
    """The six notebooks as trivial ones with the parameters the runner passes (01_setup runs ``setup``,
    04_benchmark also ``benchmark``)."""
    one = "profile = 'smoke'\nencoder = 'vit'\nresults_dir = None\nresume = True"
    every = "profile = 'smoke'\nencoders = ['vit']\nresults_dir = None"
    nbs = root / "notebooks"
    write_notebook(nbs / "00_findings.ipynb", "print(editions)",
                   parameters="encoders = ['vit']\neditions = ['smoke']\nresults_dir = None")
    write_notebook(nbs / "01_setup.ipynb", setup, parameters=every)
    fails = "import pathlib\nif encoder == 'vit' and pathlib.Path('FAIL_VIT').exists():\n" \
            "    raise RuntimeError('vit fails on purpose')"
    for name in ("02_train", "03_evaluate", "04_benchmark"):
        extra = [benchmark] if name == "04_benchmark" and benchmark else []
        write_notebook(nbs / f"{name}.ipynb", fails, *extra, parameters=one)
    write_notebook(nbs / "05_discussion.ipynb", "print(encoders)", parameters=every)


# The session study runs in a process of its own from the end of collection, while the tests that do not need it
# run beside it (they are put first); the first test that needs it waits for it.
STUDY_PROCESS = """
import json, sys
from pathlib import Path
from mvlip_utils.study import runner
root = Path(sys.argv[1])
with open(root / "study-lines.txt", "w") as lines:
    report = runner.run_study("smoke", json.loads(sys.argv[2]), overrides=json.loads(sys.argv[3]), root=root,
                              gpus=["cpu"] * len(json.loads(sys.argv[2])),
                              log=lambda line: print(line, file=lines, flush=True))
(root / "study-report.json").write_text(json.dumps(report, default=str))
"""
_study: dict = {}


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what will not run
def pytest_collection_modifyitems(session, config, items):
    """The tests that need the session study last, and the study started now if any of them is to run."""
    needs = [item for item in items if "smoke_study" in getattr(item, "fixturenames", ())]
    if not needs or config.option.collectonly:
        return
    items[:] = [item for item in items if item not in needs] + needs
    # pytest's own temporary folder of this session (as tmp_path_factory gives it to fixtures)
    root = copy_book_sources(config._tmp_path_factory.mktemp("smoke-study"), recorded=True)
    tmp = config._tmp_path_factory.mktemp("smoke-study-tmp")
    log = open(root / "study.log", "w")
    # a TMPDIR of its own: the chains' device timing locks are not the ones of studies that tests run meanwhile
    _study.update(root=root, log=log, process=subprocess.Popen(
        [sys.executable, "-c", STUDY_PROCESS, str(root), json.dumps(STUDY_ENCODERS), json.dumps(TINY)],
        cwd=root, env=child_env(TMPDIR=str(tmp)), stdout=log, stderr=subprocess.STDOUT, start_new_session=True))


def pytest_unconfigure(config):
    process = _study.get("process")
    if process is not None and process.poll() is None:  # the session ended before a test needed it
        os.killpg(process.pid, signal.SIGKILL)  # its chain processes too (their kernels follow their parent)
        process.wait()


@pytest.fixture(scope="session")
def smoke_study():
    """The tiny study (TINY; MVLIP and CLIP(Swin), two seeds) executed through papermill with each encoder's
    chain in its own CPU process, then the recorded GPU editions' discussions, the findings over all, and the
    book built with the recorded chapters, as `make book` builds it: {root, report, lines, results}."""
    if "process" not in _study:
        pytest.fail("the session study was not started (pytest_collection_modifyitems)")
    root, process = _study["root"], _study["process"]
    if process.wait() != 0:
        pytest.fail(f"the session study failed (exit {process.returncode}):\n"
                    + (root / "study.log").read_text()[-6000:], pytrace=False)
    report = json.loads((root / "study-report.json").read_text())
    report["html"] = Path(report["html"]) if report.get("html") else None
    lines = (root / "study-lines.txt").read_text().splitlines()
    return {"root": root, "report": report, "lines": lines, "results": root / "results" / "smoke"}


@pytest.fixture(scope="session")
def finished_runs(tmp_path_factory):
    """Two finished seeds of a tiny vit run (trained once): {config, root}; copy the folder before changing it."""
    from mvlip_utils.train import loop

    root = tmp_path_factory.mktemp("finished-runs")
    config = tiny_config(root, seeds=[0, 1])
    loop.train_seeds(config, progress=False)
    return {"config": config, "root": root}


# The in-place initialisations of torch.nn.init and the tensor arithmetic of timm's trunc_normal_
INIT_METHODS = {"uniform_", "normal_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                "xavier_normal_", "orthogonal_", "constant_", "zeros_", "ones_", "zero_", "fill_", "erfinv_", "mul_",
                "add_", "sub_", "div_", "clamp_"}


class uninitialised_parameters(TorchFunctionMode):
    """Inside the block nothing fills a Parameter's values (every other operation runs as usual): a paper-size
    model in a few tenths of a second, for models whose weights are not used or are replaced."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        if getattr(func, "__name__", "") in INIT_METHODS and isinstance(target, torch.nn.Parameter):
            return target
        return func(*args, **kwargs)
