"""The study as a book: papermill runs the five notebooks, jupyter-book compiles them.

    python -m mvlip_utils.study --profile smoke [--encoders mambavision swin vit] [--force] [--no-book]
                                [-p key=value ...]

Order: ``01_setup`` once, then ``02_train``, ``03_evaluate``, ``04_benchmark`` for each encoder, then
``05_discussion`` once. Executed notebooks go to ``book/executed/<profile>/`` (per-encoder ones under
``<encoder>/``); then a table of contents for them is written next to them and the HTML book is built with
jupyter-book (1.x) with warnings treated as errors, into ``book/_build/html``.

Reuse: the expensive state lives in the run folders (``results/<profile>/<encoder>/``): the train notebook
loads a finished run and resumes an unfinished one (a run of other parameters stops it, named). On top of
that, a notebook whose executed copy is complete and was made from the same notebook, the same parameters
and the same ``mvlip_utils`` sources, and whose run files are still there and unchanged since, is not
executed again. ``--force`` executes everything again and retrains from scratch (``-p resume=...`` is
refused: it would only act on the steps that run anyway).

A notebook that fails stops the study with a ``StudyStepError`` whose message names the notebook, the
encoder and the failing cell (its index, the head of its source, the exception), and where the partly
executed notebook was written.

The notebooks' own helpers live in ``report`` (parameters, presentation) and ``discussion`` (Table 1,
Table 2 and the claim verdicts).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .report import ENCODER_LABELS, parameter_names
from .results import RUN_FILES

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(__file__).resolve().parent

SETUP, TRAIN, EVALUATE, BENCHMARK, DISCUSSION = (
    "01_setup", "02_train", "03_evaluate", "04_benchmark", "05_discussion")
NOTEBOOKS = (SETUP, TRAIN, EVALUATE, BENCHMARK, DISCUSSION)
PER_ENCODER = (TRAIN, EVALUATE, BENCHMARK)

PART_CAPTIONS = {"mambavision": "MVLIP: MambaVision image tower", "swin": "CLIP(Swin): Swin image tower",
                 "vit": "CLIP(ViT): ViT-B/32 image tower"}
CHAPTER_TITLES = {SETUP: "Set-up: environment, data, models", TRAIN: "training",
                  EVALUATE: "zero-shot evaluation", BENCHMARK: "throughput",
                  DISCUSSION: "Discussion: the paper's claims against our runs"}

# The run files a step leaves behind; its executed notebook is reused only while they exist.
STEP_OUTPUTS = {TRAIN: ("metrics.json", "history.csv"), EVALUATE: ("metrics.json",),
                BENCHMARK: ("benchmark.json",)}
# The run files an executed notebook shows (those that exist are digested into its metadata when it runs):
# it is reused only while they are unchanged, e.g. not after the run was retrained outside the study.
STEP_FILES = {TRAIN: RUN_FILES, EVALUATE: RUN_FILES, BENCHMARK: ("benchmark.json",)}
FINGERPRINT_IGNORES = ("resume",)  # parameters that change how a step runs, not what it produces


class StudyStepError(RuntimeError):
    """A notebook of the study failed; the message names notebook, encoder and cell."""

    def __init__(self, message: str, notebook: str, encoder: str | None, cell_index: int | None = None):
        super().__init__(message)
        self.notebook = notebook
        self.encoder = encoder
        self.cell_index = cell_index


# ------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Step:
    notebook: str               # stem, e.g. "02_train"
    encoder: str | None = None  # None for setup and discussion

    @property
    def label(self) -> str:
        return f"{self.notebook} [{self.encoder}]" if self.encoder else self.notebook

    def output(self, book_dir: Path, profile: str) -> Path:
        base = Path(book_dir) / "executed" / profile
        if self.encoder:
            base = base / self.encoder
        return base / f"{self.notebook}.ipynb"


def plan(encoders: Sequence[str]) -> list[Step]:
    """Setup once, train/evaluate/benchmark per encoder, discussion once."""
    steps = [Step(SETUP)]
    for encoder in encoders:
        steps += [Step(nb, encoder) for nb in PER_ENCODER]
    return steps + [Step(DISCUSSION)]


def notebook_parameters(path: str | os.PathLike) -> list[str]:
    """The names a notebook's ``parameters`` cell assigns (ValueError unless there is exactly one)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    names = []
    for node in ast.parse(cells[0].source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def step_parameters(step: Step, profile: str, encoders: Sequence[str], overrides: dict[str, Any],
                    accepted: Iterable[str], force: bool = False) -> dict[str, Any]:
    """The papermill parameters of one step: the profile, the encoder(s) and those of the user's
    overrides that this notebook's parameters cell defines (``accepted``)."""
    accepted = set(accepted)
    params: dict[str, Any] = {"profile": profile}
    params.update({k: v for k, v in overrides.items() if k in accepted})
    if step.encoder:
        params["encoder"] = step.encoder
    else:
        params["encoders"] = list(encoders)
    if step.notebook == TRAIN and force:
        params["resume"] = False
    return params


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["epochs=2", "pretrained=true", "data=/x"]`` -> {"epochs": 2, "pretrained": True, "data": "/x"}.
    Values are Python literals where they parse as one (also true/false/none), else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"-p {pair!r}: expected key=value with a parameter name as key")
        words = {"true": True, "false": False, "none": None, "null": None}
        if raw.strip().lower() in words:
            value: Any = words[raw.strip().lower()]
        else:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError):
                value = raw
        out[key] = value
    return out


def check_overrides(profile: str, encoders: Sequence[str], overrides: dict[str, Any],
                    notebook_names: Iterable[str] = ()) -> None:
    """Fail before any notebook runs when a parameter is unknown or invalid (the error names it).
    ``notebook_names``: parameters some notebook defines beyond the StudyConfig fields."""
    from .profiles import ENCODERS, get_config

    bad = [e for e in encoders if e not in ENCODERS]
    if bad:
        raise ValueError(f"--encoders: unknown encoder(s) {bad}; choose from {list(ENCODERS)}")
    for key in ("profile", "encoder", "encoders"):
        if key in overrides:
            raise ValueError(f"-p {key}=...: choose profile and encoders with --profile and --encoders")
    if "resume" in overrides:  # it would be ignored wherever a step is reused (FINGERPRINT_IGNORES)
        raise ValueError("-p resume=...: use --force to retrain from scratch (the study sets resume itself)")
    fields_ = set(parameter_names())
    unknown = sorted(set(overrides) - fields_ - set(notebook_names))
    if unknown:
        raise ValueError(f"-p: unknown parameter(s) {unknown}; known: {sorted(fields_ | set(notebook_names))}")
    for encoder in encoders:
        get_config(profile, encoder=encoder, **{k: v for k, v in overrides.items() if k in fields_})


# ----------------------------------------------------------------------------------------- kernel
def kernel_for_this_python() -> str:
    """The name of a Jupyter kernel that runs this very interpreter (so notebooks see this venv).

    Prefers ``mvlip`` (registered by scripts/setup_env.sh), then ``python3``; a spec qualifies when its
    command is this interpreter or plain ``python``/``python3`` (which jupyter_client maps to it)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    here = os.path.normpath(os.path.abspath(sys.executable))
    generic = {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}
    seen = []
    for name in ("mvlip", "python3"):
        try:
            argv0 = manager.get_kernel_spec(name).argv[0]
        except NoSuchKernel:
            continue
        seen.append(f"{name} -> {argv0}")
        if argv0 in generic or os.path.normpath(os.path.abspath(argv0)) == here:
            return name
    raise RuntimeError(f"no Jupyter kernel runs {sys.executable} (found: {seen or 'none'}); "
                       "run scripts/setup_env.sh, or `python -m ipykernel install --user --name mvlip`")


# ------------------------------------------------------------------------------------ fingerprint
def _sha256_files(paths: Iterable[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def library_hash() -> str:
    """Hash of the mvlip_utils sources and reference data: a change re-executes the notebooks."""
    return _sha256_files(p for p in PACKAGE_DIR.rglob("*")
                         if p.is_file() and p.suffix in {".py", ".json", ".csv"} and "__pycache__" not in p.parts)


def fingerprint(source: Path, parameters: dict[str, Any], library: str) -> str:
    params = {k: v for k, v in parameters.items() if k not in FINGERPRINT_IGNORES}
    digest = hashlib.sha256()
    digest.update(Path(source).read_bytes())
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    digest.update(library.encode())
    return digest.hexdigest()


def executed_fingerprint(path: Path, key: str = "fingerprint") -> str | None:
    """The fingerprint of an executed notebook that completed without error, else None (``key="run_files"``:
    the digest of the run files it showed)."""
    import nbformat

    if not Path(path).is_file():
        return None
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # noqa: BLE001 - an unreadable (half-written) notebook is simply redone
        return None
    pm = nb.metadata.get("papermill", {})
    if pm.get("exception") or not pm.get("end_time"):
        return None
    return nb.metadata.get("mvlip", {}).get(key)


def run_files_digest(step: Step, run: Path | None) -> str | None:
    """Digest of the files of ``run`` that ``step`` shows (STEP_FILES; those that exist); None for the
    steps of no encoder."""
    if not step.encoder or run is None:
        return None
    return _sha256_files(p for p in (Path(run) / name for name in STEP_FILES.get(step.notebook, ())) if p.is_file())


def run_folder(root: Path, profile: str, encoder: str, overrides: dict[str, Any]) -> Path:
    """The run folder a step of ``encoder`` writes, as seen from ``root`` (the notebooks' working folder)."""
    from . import results
    from .profiles import get_config

    names = set(parameter_names())
    config = get_config(profile, encoder=encoder, **{k: v for k, v in overrides.items() if k in names})
    return Path(root) / results.run_dir(config)


# ---------------------------------------------------------------------------------------- execute
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def describe_failure(step: Step, exc: Any, output: Path, source_lines: int = 8, traceback_lines: int = 20) -> str:
    """A readable account of a PapermillExecutionError: notebook, encoder, cell, source head, error."""
    source = (exc.source or "").splitlines()
    head = "\n".join("    | " + line for line in source[:source_lines])
    if len(source) > source_lines:
        head += f"\n    | ... ({len(source) - source_lines} more lines)"
    trace = _ANSI.sub("", "\n".join(exc.traceback or [])).splitlines()
    tail = "\n".join(trace[-traceback_lines:])
    return (f"notebook {step.notebook}.ipynb failed"
            f"{f' for encoder {step.encoder!r}' if step.encoder else ''} "
            f"in cell {exc.cell_index} (execution count {exc.exec_count}):\n"
            f"{head}\n"
            f"  {exc.ename}: {exc.evalue}\n"
            f"  traceback (last lines):\n{_indent(tail, '    ')}\n"
            f"  the partly executed notebook is {output}")


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def execute_step(step: Step, source: Path, output: Path, parameters: dict[str, Any], kernel_name: str,
                 cwd: Path, fp: str, timeout: int | None = None, run: Path | None = None) -> float:
    """Execute one notebook with papermill; returns seconds. Raises StudyStepError on failure. Its
    metadata gets ``fp`` and the digest of the files of the run folder ``run`` it shows."""
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(source), str(output), parameters=parameters, kernel_name=kernel_name,
                                   cwd=str(cwd), progress_bar=False, log_output=False,
                                   execution_timeout=timeout,
                                   # the kernel's own start-up chatter (e.g. ipykernel's TCP notice) stays out
                                   extra_arguments=["--IPKernelApp.log_level=CRITICAL"])
    except PapermillExecutionError as exc:
        raise StudyStepError(describe_failure(step, exc, output), step.notebook, step.encoder,
                             exc.cell_index) from None
    except Exception as exc:  # kernel died, timeout, bad notebook: still say which step
        raise StudyStepError(f"notebook {step.notebook}.ipynb"
                             f"{f' for encoder {step.encoder!r}' if step.encoder else ''} could not run: "
                             f"{type(exc).__name__}: {exc}", step.notebook, step.encoder) from exc
    seconds = time.perf_counter() - start
    nb = nbformat.read(output, as_version=4)
    nb.metadata["mvlip"] = {"fingerprint": fp, "seconds": round(seconds, 2), "step": step.label,
                            "run_files": run_files_digest(step, run)}
    nbformat.write(nb, output)
    return seconds


def run_study(profile: str = "smoke", encoders: Sequence[str] | None = None,
              overrides: dict[str, Any] | None = None, force: bool = False, book: bool = True,
              root: str | os.PathLike = PROJECT_ROOT, kernel_name: str | None = None,
              timeout: int | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the whole study (and build the book). ``root`` holds notebooks/, book/ and _config.yml and is
    the notebooks' working directory. Returns {"steps": [(label, status, seconds)], "total_s", "html"}."""
    from .profiles import ENCODERS

    root = Path(root).resolve()
    encoders = list(encoders or ENCODERS)
    overrides = dict(overrides or {})
    sources = {nb: root / "notebooks" / f"{nb}.ipynb" for nb in NOTEBOOKS}
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"notebook(s) missing: {missing}")
    accepted = {nb: notebook_parameters(path) for nb, path in sources.items()}
    check_overrides(profile, encoders, overrides, {n for names in accepted.values() for n in names})
    kernel_name = kernel_name or kernel_for_this_python()
    library = library_hash()
    book_dir = root / "book"
    t0 = time.perf_counter()
    log(f"[study] profile={profile} encoders={encoders} overrides={overrides or '{}'} "
        f"kernel={kernel_name} force={force}")
    report: list[tuple[str, str, float]] = []
    # A step that executes makes the later steps that read its results execute too: train -> evaluate ->
    # benchmark of the same encoder, and any executed step -> the discussion.
    dirty: set[str | None] = set()
    steps = plan(encoders)
    for i, step in enumerate(steps, 1):
        source = sources[step.notebook]
        output = step.output(book_dir, profile)
        params = step_parameters(step, profile, encoders, overrides, accepted[step.notebook], force)
        fp = fingerprint(source, params, library)
        run = run_folder(root, profile, step.encoder, overrides) if step.encoder else None
        outputs_there = all((run / name).is_file() for name in STEP_OUTPUTS.get(step.notebook, ())) if run else True
        stale = force or step.encoder in dirty or (step.notebook == DISCUSSION and bool(dirty))
        if (not stale and outputs_there and executed_fingerprint(output) == fp
                and executed_fingerprint(output, "run_files") == run_files_digest(step, run)):
            log(f"[study {i:2d}/{len(steps)}] {step.label:<28} reused (unchanged)")
            report.append((step.label, "reused", 0.0))
            continue
        log(f"[study {i:2d}/{len(steps)}] {step.label:<28} running ...")
        seconds = execute_step(step, source, output, params, kernel_name, root, fp, timeout, run)
        dirty.add(step.encoder)
        log(f"[study {i:2d}/{len(steps)}] {step.label:<28} done in {seconds:6.1f} s  "
            f"({time.perf_counter() - t0:6.1f} s so far)")
        report.append((step.label, "executed", seconds))
    study_s = time.perf_counter() - t0
    log(f"[study] notebooks: {study_s:.1f} s")
    html = None
    if book:
        toc = write_toc(book_dir / "executed" / profile / "_toc.yml", profile, encoders)
        tb = time.perf_counter()
        html = build_book(root, toc, log=log)
        log(f"[study] book built in {time.perf_counter() - tb:.1f} s: {html / 'index.html'}")
    total = time.perf_counter() - t0
    log(f"[study] total {total:.1f} s ({total / 60:.1f} min)")
    return {"steps": report, "study_s": study_s, "total_s": total, "html": html}


# ------------------------------------------------------------------------------------------- book
def toc_text(profile: str, encoders: Sequence[str]) -> str:
    """The jupyter-book table of contents for one profile's executed notebooks (paths from the root)."""
    base = f"book/executed/{profile}"
    lines = ["# Generated by mvlip_utils.study (python -m mvlip_utils.study); edit toc_text() instead.",
             "format: jb-book", "root: book/intro", "parts:",
             "  - caption: Set-up", "    chapters:",
             f"      - file: {base}/{SETUP}", f"        title: \"{CHAPTER_TITLES[SETUP]}\""]
    for encoder in encoders:
        label = ENCODER_LABELS.get(encoder, encoder)
        lines += [f"  - caption: \"{PART_CAPTIONS.get(encoder, label)}\"", "    chapters:"]
        for nb in PER_ENCODER:
            lines += [f"      - file: {base}/{encoder}/{nb}", f"        title: \"{label}: {CHAPTER_TITLES[nb]}\""]
    lines += ["  - caption: Discussion", "    chapters:",
              f"      - file: {base}/{DISCUSSION}", f"        title: \"{CHAPTER_TITLES[DISCUSSION]}\""]
    return "\n".join(lines) + "\n"


def write_toc(path: Path, profile: str, encoders: Sequence[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toc_text(profile, encoders))
    return path


def build_book(root: Path, toc: Path, log: Callable[[str], None] = print) -> Path:
    """jupyter-book build with warnings as errors (all reported, then fail). Returns the html folder."""
    root = Path(root)
    exe = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe) if exe.is_file() else "jupyter-book", "build", str(root), "--toc", str(toc),
           "--path-output", str(root / "book"), "--warningiserror", "--keep-going", "--all"]
    log("[study] " + " ".join(cmd))
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        out = _ANSI.sub("", proc.stdout + proc.stderr).strip().splitlines()
        warnings = [line for line in out if "WARNING" in line or "ERROR" in line]
        raise RuntimeError("jupyter-book build failed (warnings are errors):\n" +
                           "\n".join((warnings or out[-40:])[:60]))
    return root / "book" / "_build" / "html"


# -------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    from .profiles import ENCODERS, PROFILES

    parser = argparse.ArgumentParser(prog="python -m mvlip_utils.study", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke", choices=sorted(PROFILES))
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), metavar="ENCODER",
                        help=f"image towers to run, from {list(ENCODERS)} (default: all)")
    parser.add_argument("--force", action="store_true", help="execute every notebook again and retrain")
    parser.add_argument("--no-book", action="store_true", help="run the notebooks, do not build the book")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter of every notebook (e.g. -p epochs=2 -p device=cpu)")
    parser.add_argument("--root", default=str(PROJECT_ROOT), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        run_study(args.profile, args.encoders, parse_overrides(args.param), force=args.force,
                  book=not args.no_book, root=args.root)
    except (StudyStepError, ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"\n[study] FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
