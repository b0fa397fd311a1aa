"""The study as a book: papermill runs the notebooks of each edition, jupyter-book compiles them.

    python -m mvlip_utils.study --profile smoke [--encoders mambavision swin vit] [--force] [--no-book]
                                [--gpus 0,1,2] [-p key=value ...]

An *edition* is one profile's runs and chapters. For the profile asked for: ``01_setup`` once, then
``02_train``, ``03_evaluate``, ``04_benchmark`` for each encoder (one after another, or each encoder's chain
in its own process pinned to one GPU with ``--gpus``), then ``05_discussion``. Then ``00_findings`` once
over every edition, and the HTML book (jupyter-book 1.x, warnings as errors) into ``book/_build/html``.

Editions of profiles that need a CUDA GPU (``speed``, ``paper``) are *recorded*: their executed setup and
per-encoder notebooks go to ``book/recorded/<profile>/`` (committed with the run folders' small files), and
a machine without CUDA includes them as they were executed, never running them again; their discussion
only reads run files, so it is executed (``book/executed/<profile>/``) wherever the book is built. Other
editions are build products under ``book/executed/<profile>/``.

Reuse: the expensive state lives in the run folders (``results/<profile>/<encoder>/``): the train notebook
loads a finished run and resumes an unfinished one. On top of that, a notebook whose executed copy is
complete and was made from the same notebook, the same parameters, the same ``mvlip_utils`` sources and
the same content of every file it reads (``step_inputs``: the run files, the results it renders) is not
executed again. ``--force`` executes everything again and retrains from scratch.

A notebook that fails stops its chain with a ``StudyStepError`` whose message names the notebook, the
encoder and the failing cell (its index, the head of its source, the exception), and where the partly
executed notebook was written. With ``--gpus`` the other encoders still finish and the failing ones are
named at the end.
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
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .profiles import ENCODER_LABELS, ENCODERS, PROFILES, TOWER_NAMES, needs_cuda
from .params import parameter_names

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(__file__).resolve().parent

FINDINGS, SETUP, TRAIN, EVALUATE, BENCHMARK, DISCUSSION = (
    "00_findings", "01_setup", "02_train", "03_evaluate", "04_benchmark", "05_discussion")
NOTEBOOKS = (FINDINGS, SETUP, TRAIN, EVALUATE, BENCHMARK, DISCUSSION)
PER_ENCODER = (TRAIN, EVALUATE, BENCHMARK)
RECORDED_STEPS = (SETUP,) + PER_ENCODER  # what a recorded (GPU) edition keeps as executed

CHAPTER_TITLES = {SETUP: "Set-up: environment, data, models", TRAIN: "training",
                  EVALUATE: "zero-shot evaluation", BENCHMARK: "throughput",
                  DISCUSSION: "Discussion: the paper's claims against these runs",
                  FINDINGS: "Findings: the paper's claims, one verdict each"}
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
    encoder: str | None = None  # None for setup, discussion and findings
    profile: str = "smoke"

    @property
    def label(self) -> str:
        where = f" [{self.encoder}]" if self.encoder else ""
        return f"{self.notebook}{where}" if self.notebook == FINDINGS else f"{self.profile}: {self.notebook}{where}"

    def output(self, book_dir: Path, profile: str | None = None) -> Path:
        """Where the executed notebook goes: book/recorded/<profile>/ for a recorded edition's GPU steps,
        else book/executed/<profile>/ (per-encoder ones under <encoder>/); the findings at book/executed/."""
        profile = profile or self.profile
        if self.notebook == FINDINGS:
            return Path(book_dir) / "executed" / f"{FINDINGS}.ipynb"
        kind = "recorded" if needs_cuda(profile) and self.notebook in RECORDED_STEPS else "executed"
        base = Path(book_dir) / kind / profile
        if self.encoder:
            base = base / self.encoder
        return base / f"{self.notebook}.ipynb"


def plan(encoders: Sequence[str], profile: str = "smoke") -> list[Step]:
    """Setup once, train/evaluate/benchmark per encoder, discussion once (one edition)."""
    steps = [Step(SETUP, None, profile)]
    for encoder in encoders:
        steps += [Step(nb, encoder, profile) for nb in PER_ENCODER]
    return steps + [Step(DISCUSSION, None, profile)]


# Parameters a notebook has besides the profile, the encoder(s), StudyConfig's and BenchSettings' fields
NOTEBOOK_EXTRAS: dict[str, tuple[tuple[str, Any, str], ...]] = {
    FINDINGS: (("editions", ["smoke", "speed"], "editions (profiles) the findings read, from the least to the "
                                                 "most faithful; one without runs is left out"),),
    TRAIN: (("resume", True, "False: delete the checkpoint and train from scratch"),
            ("progress", False, "tqdm progress bars (handy in JupyterLab)")),
    EVALUATE: (("n_examples", 8, "example predictions shown with their images"),),
}
BENCH_FIELDS = {TRAIN: ("step_check_images", "step_check_steps"),
                BENCHMARK: ("warmup", "repeats", "eval_repeats", "eval_workers", "best_batch", "resolutions",
                            "sweep_batch", "sweep_precision", "compile_timeout_s")}


def parameters_cell_source(notebook: str) -> str:
    """The parameters cell of ``notebook`` (its only source of truth is here and in the fields' help texts:
    ``profiles.StudyConfig`` and ``profiles.BenchSettings``); a test checks every notebook against it."""
    from dataclasses import fields as dc_fields

    from .profiles import BenchSettings, StudyConfig, help_text

    def line(name: str, value: Any, help_: str) -> str:
        return f"{name} = {value!r}  # {help_}"

    lines = []
    if notebook != FINDINGS:
        lines.append(line("profile", "smoke", help_text(StudyConfig, "profile")))
    if notebook in PER_ENCODER:
        lines.append(line("encoder", "mambavision", help_text(StudyConfig, "encoder")))
    else:
        lines.append(line("encoders", list(ENCODERS), "encoders whose runs this notebook reads"))
    lines += [line(n, v, h) for n, v, h in NOTEBOOK_EXTRAS.get(notebook, ())]
    study_fields = ["results_dir"] if notebook == FINDINGS else [
        f.name for f in dc_fields(StudyConfig) if f.name not in ("profile", "encoder")]
    lines.append("# Run parameters (mvlip_utils.profiles.StudyConfig); None = the profile's value")
    lines += [line(n, None, help_text(StudyConfig, n)) for n in study_fields]
    if notebook in BENCH_FIELDS:
        lines.append("# Measuring parameters (mvlip_utils.profiles.BenchSettings); None = the profile's value")
        lines += [line(n, None, help_text(BenchSettings, n)) for n in BENCH_FIELDS[notebook]]
    return "\n".join(lines)


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
    if step.notebook == FINDINGS:
        params.pop("profile")
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


def files_digest(paths: Iterable[Path], root: Path | None = None) -> str:
    """Hash of the content of ``paths`` (a missing file counts as missing), named relative to ``root``."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        name = str(path.relative_to(root)) if root and path.is_relative_to(root) else str(path)
        digest.update(name.encode())
        digest.update(path.read_bytes() if path.is_file() else b"<missing>")
    return digest.hexdigest()


def fingerprint(source: Path, parameters: dict[str, Any], library: str, inputs: str = "") -> str:
    """What decides an executed notebook: its source, its parameters (``resume`` aside), the library and
    ``inputs`` (``files_digest`` of the files it reads)."""
    params = {k: v for k, v in parameters.items() if k not in FINGERPRINT_IGNORES}
    digest = hashlib.sha256()
    digest.update(Path(source).read_bytes())
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    digest.update(library.encode())
    digest.update(inputs.encode())
    return digest.hexdigest()


def executed_fingerprint(path: Path) -> str | None:
    """The fingerprint of an executed notebook that completed without error, else None."""
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
    return nb.metadata.get("mvlip", {}).get("fingerprint")


def run_folder(root: Path, profile: str, encoder: str, overrides: dict[str, Any]) -> Path:
    """The run folder a step of ``encoder`` writes, as seen from ``root`` (the notebooks' working folder)."""
    from . import results
    from .profiles import get_config

    names = set(parameter_names())
    config = get_config(profile, encoder=encoder, **{k: v for k, v in overrides.items() if k in names})
    return Path(root) / results.run_dir(config)


def step_inputs(step: Step, root: Path, encoders: Sequence[str], overrides: dict[str, Any],
                editions: Sequence[str] = ()) -> list[Path]:
    """The files an executed notebook depends on besides its parameters: the run files it writes or reads
    (train, evaluate, benchmark), every run file of the edition (discussion), of every edition (findings)."""
    from .results import run_files

    if step.notebook == SETUP:
        return []
    if step.encoder:
        run = run_folder(root, step.profile, step.encoder, overrides)
        if step.notebook == BENCHMARK:
            return [run / "benchmark.json"]
        # (03_evaluate also draws confusion.csv and predictions.csv, written with metrics.json by the same run;
        # a recorded edition does not commit those large files, so they are not part of its fingerprint)
        return [f for f in run_files(run) if f.name != "benchmark.json"]
    profiles = editions if step.notebook == FINDINGS else [step.profile]
    files: list[Path] = []
    if step.notebook == DISCUSSION:  # separate measurements it reports beside the edition's runs
        probes = Path(root) / "results" / f"{step.profile}-probe"
        files += sorted(p for p in probes.rglob("*") if p.is_file()) if probes.is_dir() else []
    for profile in profiles:
        files += [root / "results" / profile / "study_projection.json"] if step.notebook == FINDINGS else []
        for encoder in encoders:
            files += run_files(run_folder(root, profile, encoder, overrides))
    return files


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
                 cwd: Path, fp: str | Callable[[], str], timeout: int | None = None) -> float:
    """Execute one notebook with papermill; returns seconds. Raises StudyStepError on failure. ``fp`` (or a
    callable giving it once the notebook has run, when it depends on the files the notebook writes) is
    stored in the executed notebook's metadata."""
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
    for cell in nb.cells:  # papermill's cell of the parameters it was given is folded like the cell it follows
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "hide-input" not in tags:
            tags.append("hide-input")
    nb.metadata["mvlip"] = {"fingerprint": fp() if callable(fp) else fp, "seconds": round(seconds, 2),
                            "step": step.label}
    nbformat.write(nb, output)
    return seconds


@dataclass
class StudyContext:
    """What every step of one ``run_study`` call shares."""

    root: Path
    sources: dict[str, Path]
    accepted: dict[str, list[str]]
    overrides: dict[str, Any]
    kernel_name: str
    library: str
    force: bool
    timeout: int | None
    log: Callable[[str], None]


def run_step(ctx: StudyContext, step: Step, encoders: Sequence[str], editions: Sequence[str] = (),
             index: str = "") -> tuple[str, str, float]:
    """Execute ``step`` unless its executed copy is up to date (and not ``force``): (label, status, seconds)."""
    source = ctx.sources[step.notebook]
    output = step.output(ctx.root / "book")
    params = step_parameters(step, step.profile, encoders, ctx.overrides, ctx.accepted[step.notebook], ctx.force)
    if step.notebook == FINDINGS:
        params["editions"] = list(editions)

    def current() -> str:
        inputs = files_digest(step_inputs(step, ctx.root, encoders, ctx.overrides, editions), ctx.root)
        return fingerprint(source, params, ctx.library, inputs)

    if not ctx.force and executed_fingerprint(output) == current():
        ctx.log(f"[study {index}] {step.label:<34} reused (unchanged)")
        return step.label, "reused", 0.0
    ctx.log(f"[study {index}] {step.label:<34} running ...")
    seconds = execute_step(step, source, output, params, ctx.kernel_name, ctx.root, current, ctx.timeout)
    ctx.log(f"[study {index}] {step.label:<34} done in {seconds:6.1f} s")
    return step.label, "executed", seconds


def recorded_editions(root: Path, exclude: Sequence[str] = ()) -> dict[str, list[str]]:
    """{profile: encoders} of the recorded editions under book/recorded/ whose setup and per-encoder
    notebooks are all there (an incomplete one is left out with its chapters)."""
    out = {}
    base = Path(root) / "book" / "recorded"
    for profile in PROFILES:
        if profile in exclude or not (base / profile / f"{SETUP}.ipynb").is_file():
            continue
        encoders = [e for e in ENCODERS if all((base / profile / e / f"{nb}.ipynb").is_file() for nb in PER_ENCODER)]
        if encoders:
            out[profile] = encoders
    return out


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run_study(profile: str = "smoke", encoders: Sequence[str] | None = None,
              overrides: dict[str, Any] | None = None, force: bool = False, book: bool = True,
              root: str | os.PathLike = PROJECT_ROOT, kernel_name: str | None = None,
              timeout: int | None = None, log: Callable[[str], None] = print,
              gpus: Sequence[str] | None = None, encoder_steps_only: bool = False) -> dict[str, Any]:
    """Run one edition of the study, refresh the discussions of the recorded editions, the findings, and
    build the book. ``root`` holds notebooks/, book/ and _config.yml and is the notebooks' working
    directory. ``gpus``: run each encoder's chain in its own process with CUDA_VISIBLE_DEVICES set to the
    matching entry ("cpu": no GPU). ``encoder_steps_only``: only the per-encoder chains (what each such
    process runs). Returns {"steps": [(label, status, seconds)], "failed": [...], "total_s", "html"}."""
    root = Path(root).resolve()
    encoders = list(encoders or ENCODERS)
    overrides = dict(overrides or {})
    sources = {nb: root / "notebooks" / f"{nb}.ipynb" for nb in NOTEBOOKS}
    missing = [str(p) for p in sources.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"notebook(s) missing: {missing}")
    accepted = {nb: notebook_parameters(path) for nb, path in sources.items()}
    check_overrides(profile, encoders, overrides, {n for names in accepted.values() for n in names})
    if needs_cuda(profile) and overrides.get("device", "cuda") != "cpu" and not cuda_available():
        raise ValueError(f"--profile {profile} needs a CUDA GPU and this machine has none. Its recorded edition "
                         f"(book/recorded/{profile}/, if committed) is included in every book as it was executed: "
                         "build the book with `make book` (the smoke profile).")
    if gpus is not None and len(gpus) != len(encoders):
        raise ValueError(f"--gpus: {len(gpus)} entries for {len(encoders)} encoders {encoders}; give one each")
    ctx = StudyContext(root, sources, accepted, overrides, kernel_name or kernel_for_this_python(),
                       library_hash(), force, timeout, log)
    os.environ.setdefault("MVLIP_COMMAND", f"python -m mvlip_utils.study --profile {profile}")
    t0 = time.perf_counter()
    log(f"[study] profile={profile} encoders={encoders} overrides={overrides or '{}'} kernel={ctx.kernel_name} "
        f"force={force}" + (f" gpus={list(gpus)}" if gpus else ""))
    report: list[tuple[str, str, float]] = []
    failed: list[str] = []
    steps = plan(encoders, profile)
    if encoder_steps_only:
        steps = [s for s in steps if s.encoder]
    if gpus is None:
        for i, step in enumerate(steps, 1):
            report.append(run_step(ctx, step, encoders, index=f"{i:2d}/{len(steps)}"))
    else:
        report.append(run_step(ctx, steps[0], encoders, index="setup"))
        chains, failed = run_chains_in_parallel(ctx, profile, encoders, gpus, force)
        report += chains
        report.append(run_step(ctx, steps[-1], encoders, index="discussion"))
    editions = {}
    if not encoder_steps_only:
        editions = {profile: encoders, **recorded_editions(root, exclude=[profile])}
        for other, other_encoders in editions.items():
            if other != profile:
                report.append(run_step(ctx, Step(DISCUSSION, None, other), other_encoders, index="recorded"))
        order = sorted(editions, key=list(PROFILES).index)
        all_encoders = [e for e in ENCODERS if any(e in editions[p] for p in order)]
        report.append(run_step(ctx, Step(FINDINGS, None, profile), all_encoders, order, index="findings"))
        if needs_cuda(profile):
            write_edition_record(root, profile, encoders, report)
    study_s = time.perf_counter() - t0
    log(f"[study] notebooks: {study_s:.1f} s")
    html = None
    if book and not encoder_steps_only:
        toc = write_toc(root / "book" / "executed" / "_toc.yml", editions)
        tb = time.perf_counter()
        html = build_book(root, toc, log=log)
        log(f"[study] book built in {time.perf_counter() - tb:.1f} s: {html / 'index.html'}")
    total = time.perf_counter() - t0
    log(f"[study] total {total:.1f} s ({total / 60:.1f} min)")
    if failed:
        raise StudyStepError(f"encoder chain(s) failed: {', '.join(failed)} (the others finished; see above)",
                             TRAIN, failed[0])
    return {"steps": report, "failed": failed, "study_s": study_s, "total_s": total, "html": html}


def run_chains_in_parallel(ctx: StudyContext, profile: str, encoders: Sequence[str], gpus: Sequence[str],
                           force: bool) -> tuple[list[tuple[str, str, float]], list[str]]:
    """Each encoder's train/evaluate/benchmark chain in its own ``python -m mvlip_utils.study`` process with
    CUDA_VISIBLE_DEVICES set to its GPU ("cpu": none); their lines are printed prefixed with the encoder and
    GPU. Returns (the chains' steps, the encoders whose chain failed)."""
    procs = {}
    for encoder, gpu in zip(encoders, gpus):
        cmd = [sys.executable, "-m", "mvlip_utils.study", "--profile", profile, "--encoders", encoder,
               "--encoder-steps-only", "--no-book", "--root", str(ctx.root)]
        cmd += ["--force"] if force else []
        for key, value in ctx.overrides.items():
            cmd += ["-p", f"{key}={value!r}"]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "" if str(gpu) == "cpu" else str(gpu), "PYTHONUNBUFFERED": "1"}
        procs[encoder] = (gpu, subprocess.Popen(cmd, cwd=ctx.root, env=env, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True))
    report: list[tuple[str, str, float]] = []
    lock = threading.Lock()

    def relay(encoder: str, gpu: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            line = line.rstrip()
            match = re.search(r"\] (.+?)\s+(reused|done in\s+([\d.]+) s)", line)
            with lock:
                ctx.log(f"[{encoder} on gpu {gpu}] {line}")
                if match:
                    report.append((match.group(1).strip(), "reused" if match.group(2) == "reused" else "executed",
                                   float(match.group(3) or 0.0)))
        proc.wait()

    threads = [threading.Thread(target=relay, args=(e, g, p)) for e, (g, p) in procs.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    failed = [e for e, (_, p) in procs.items() if p.returncode != 0]
    for encoder in failed:
        ctx.log(f"[study] {encoder} on gpu {procs[encoder][0]}: FAILED (exit {procs[encoder][1].returncode})")
    return report, failed


def write_edition_record(root: Path, profile: str, encoders: Sequence[str], steps) -> Path:
    """book/recorded/<profile>/edition.json: the provenance of a recorded edition (GPU, driver, versions,
    code commit, date, command) and the seconds of each step, for the book and the reader."""
    from .results import collect_provenance, write_json

    path = Path(root) / "book" / "recorded" / profile / "edition.json"
    write_json(path, {"profile": profile, "encoders": list(encoders), "provenance": collect_provenance("cuda"),
                      "steps": [{"step": label, "status": status, "seconds": round(seconds, 1)}
                                for label, status, seconds in steps]})
    return path


# ------------------------------------------------------------------------------------------- book
def edition_caption(root: Path, profile: str) -> str:
    """'Edition smoke: CPU, random weights' / 'Edition speed: NVIDIA H200, random weights (recorded 2026-11-28)'."""
    record = Path(root) / "book" / "recorded" / profile / "edition.json"
    weights = "pretrained" if PROFILES[profile].get("pretrained") else "random weights"
    if record.is_file():
        prov = json.loads(record.read_text())["provenance"]
        return f"Edition {profile}: {prov.get('gpu_name')}, {weights} (recorded {str(prov.get('date_utc'))[:10]})"
    return f"Edition {profile}: {weights}"


def toc_text(editions: dict[str, Sequence[str]], root: Path = PROJECT_ROOT) -> str:
    """The jupyter-book table of contents: the introduction, the findings, then each edition (set-up, the
    three chapters of each encoder, the discussion), paths from the repository root."""
    lines = ["# Generated by mvlip_utils.study (python -m mvlip_utils.study); edit toc_text() instead.",
             "format: jb-book", "root: index", "parts:",
             "  - caption: Findings", "    chapters:",
             f"      - file: book/executed/{FINDINGS}", f"        title: \"{CHAPTER_TITLES[FINDINGS]}\""]
    for profile in sorted(editions, key=list(PROFILES).index):
        def path(step: Step) -> str:
            return step.output(Path("book"), profile).with_suffix("").as_posix()

        lines += [f"  - caption: \"{edition_caption(root, profile)}\"", "    chapters:",
                  f"      - file: {path(Step(SETUP, None, profile))}",
                  f"        title: \"{profile}: {CHAPTER_TITLES[SETUP]}\""]
        for encoder in editions[profile]:
            for nb in PER_ENCODER:
                lines += [f"      - file: {path(Step(nb, encoder, profile))}",
                          f"        title: \"{profile}: {ENCODER_LABELS[encoder]} ({TOWER_NAMES[encoder]}): "
                          f"{CHAPTER_TITLES[nb]}\""]
        lines += [f"      - file: {path(Step(DISCUSSION, None, profile))}",
                  f"        title: \"{profile}: {CHAPTER_TITLES[DISCUSSION]}\""]
    return "\n".join(lines) + "\n"


def write_toc(path: Path, editions: dict[str, Sequence[str]], root: Path = PROJECT_ROOT) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toc_text(editions, root))
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
    parser = argparse.ArgumentParser(prog="python -m mvlip_utils.study", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke", choices=list(PROFILES))
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), metavar="ENCODER",
                        help=f"image towers to run, from {list(ENCODERS)} (default: all)")
    parser.add_argument("--force", action="store_true", help="execute every notebook again and retrain")
    parser.add_argument("--no-book", action="store_true", help="run the notebooks, do not build the book")
    parser.add_argument("--gpus", default=None, metavar="LIST",
                        help="one entry per encoder, e.g. 0,1,2: each encoder's chain in its own process on that "
                             "GPU (the same index twice shares a GPU; 'cpu' runs a chain without one)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter of every notebook (e.g. -p epochs=2 -p device=cpu)")
    parser.add_argument("--root", default=str(PROJECT_ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--encoder-steps-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("MVLIP_COMMAND", "python -m mvlip_utils.study " + " ".join(
        argv if argv is not None else sys.argv[1:]))
    try:
        gpus = [g.strip() for g in args.gpus.split(",")] if args.gpus else None
        run_study(args.profile, args.encoders, parse_overrides(args.param), force=args.force,
                  book=not args.no_book, root=args.root, gpus=gpus, encoder_steps_only=args.encoder_steps_only)
    except (StudyStepError, ValueError, RuntimeError, FileNotFoundError) as exc:
        print(f"\n[study] FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
