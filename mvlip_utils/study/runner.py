"""The study as a book: papermill runs the notebooks of each edition, jupyter-book compiles them.

    python -m mvlip_utils.study --profile smoke [--encoders mambavision swin vit] [--force] [--no-book]
                                [--gpus 0,1,2] [-p key=value ...]

An edition is one profile's runs and chapters: ``01_setup``, then ``02_train``, ``03_evaluate``,
``04_benchmark`` per encoder (in turn, or each encoder's chain in its own process with ``--gpus``), then
``05_discussion``; then ``00_findings`` over every edition and the book into ``book/_build/html``. Editions of
the profiles that need CUDA are recorded under ``book/recorded/<profile>/`` and included as executed; the
others are built under ``book/executed/<profile>/``. A notebook whose executed copy is complete and has the
same fingerprint (``reuse``) is not executed again; ``--force`` executes everything and retrains. A failing
notebook raises ``StudyStepError`` naming the notebook, encoder and cell.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import nbformat
from jupyter_client.kernelspec import KernelSpecManager

from ..settings.encoders import is_paper_encoder
from ..settings.notebooks import (BENCHMARK, DISCUSSION, FINDINGS, NOTEBOOKS, PER_ENCODER, SETUP, TRAIN, Step,
                                  edition_record_path, plan)
from ..settings.params import USER_ERRORS, CommandLineParser, parameter_help_epilog, parameter_names, user_error_exit
from ..settings.profiles import ENCODERS, PROFILES, needs_cuda, records_edition
from ..train import device_share
from ..train.device_share import run_pinned
from .book import (_ANSI, PROJECT_ROOT, build_book, copy_recorded_chapters, prepare_chapter, toc_text,
                   write_edition_record)
from .reuse import executed_fingerprint, files_digest, fingerprint, library_hash, step_inputs, study_config


class StudyStepError(RuntimeError):
    """A notebook of the study failed; the message names notebook, encoder and cell."""

    def __init__(self, message: str, notebook: str, encoder: str | None, cell_index: int | None = None):
        super().__init__(message)
        self.notebook = notebook
        self.encoder = encoder
        self.cell_index = cell_index


def notebook_parameters(path: str | os.PathLike) -> list[str]:
    """The names a notebook's ``parameters`` cell assigns (ValueError unless there is exactly one)."""
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path}: expected exactly one cell tagged 'parameters', found {len(cells)}")
    names = []
    for node in ast.parse(cells[0].source).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def step_parameters(step: Step, encoders: Sequence[str], overrides: dict[str, Any], accepted: Iterable[str],
                    force: bool = False) -> dict[str, Any]:
    """The papermill parameters of one step: profile, encoder(s) and the ``accepted`` overrides."""
    accepted = set(accepted)
    params: dict[str, Any] = {} if step.notebook == FINDINGS else {"profile": step.profile}
    params.update({k: v for k, v in overrides.items() if k in accepted})
    params.update({"encoder": step.encoder} if step.encoder else {"encoders": list(encoders)})
    if step.notebook == TRAIN and force:
        params["resume"] = False
    return params


_WORDS = {"true": True, "false": False, "none": None, "null": None}


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["epochs=2", "pretrained=true", "data=/x"]`` -> {"epochs": 2, "pretrained": True, "data": "/x"}."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key, word = key.strip(), raw.strip().lower()
        if not sep or not key.isidentifier():
            raise ValueError(f"-p {pair!r}: expected key=value with a parameter name as key")
        try:
            out[key] = _WORDS[word] if word in _WORDS else ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key] = raw
    return out


def check_overrides(profile: str, encoders: Sequence[str], overrides: dict[str, Any],
                    notebook_names: Iterable[str] = ()) -> None:
    """ValueError naming an unknown or invalid parameter or encoder (``notebook_names``: notebook-only ones)."""
    for encoder in (e for e in encoders if not is_paper_encoder(e)):  # a timm image model: the error names the
        from ..models.towers import check_encoder  # closest timm names (timm and MambaVision imported only here)

        try:
            check_encoder(encoder)
        except ValueError as exc:
            raise ValueError(f"--encoders: {exc}") from None
    if len(set(encoders)) != len(encoders):
        raise ValueError(f"--encoders: {list(encoders)} names an encoder twice")
    for key in sorted({"profile", "encoder", "encoders"} & set(overrides)):
        raise ValueError(f"-p {key}=...: choose profile and encoders with --profile and --encoders")
    if "resume" in overrides:  # it would be ignored wherever a step is reused (FINGERPRINT_IGNORES)
        raise ValueError("-p resume=...: use --force to retrain from scratch (the study sets resume itself)")
    fields_ = set(parameter_names())
    unknown = sorted(set(overrides) - fields_ - set(notebook_names))
    if unknown:
        raise ValueError(f"-p: unknown parameter(s) {unknown}; known: {sorted(fields_ | set(notebook_names))}")
    for encoder in encoders:
        study_config(profile, overrides, encoder=encoder)


def kernel_for_this_python() -> str:
    """The Jupyter kernel (``mvlip``, else ``python3``) that runs this interpreter; RuntimeError if none."""
    here = os.path.normpath(os.path.abspath(sys.executable))
    generic = {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}
    specs = KernelSpecManager().get_all_specs()
    found = {name: specs[name]["spec"]["argv"][0] for name in ("mvlip", "python3") if name in specs}
    for name, argv0 in found.items():
        if argv0 in generic or os.path.normpath(os.path.abspath(argv0)) == here:
            return name
    raise RuntimeError(f"no Jupyter kernel runs {sys.executable} (found: {found or 'none'}); "
                       "run scripts/setup_env.sh, or `python -m ipykernel install --user --name mvlip`")


def describe_failure(step: Step, exc: Any, output: Path) -> str:
    """A PapermillExecutionError told: notebook, encoder, cell, the cell's first 8 lines, the error and the last
    20 lines of its traceback."""
    source = (exc.source or "").splitlines()
    more = [f"... ({len(source) - 8} more lines)"] if len(source) > 8 else []
    trace = _ANSI.sub("", "\n".join(exc.traceback or [])).splitlines()[-20:]
    return (f"notebook {step.notebook}.ipynb failed{_for_encoder(step)} in cell {exc.cell_index} (execution count "
            f"{exc.exec_count}):\n" + "\n".join("    | " + line for line in source[:8] + more) + "\n"
            f"  {exc.ename}: {exc.evalue}\n  traceback (last lines):\n" + "\n".join("    " + line for line in trace)
            + f"\n  the partly executed notebook is {output}")


def _for_encoder(step: Step) -> str:
    return f" for encoder {step.encoder!r}" if step.encoder else ""


def execute_step(step: Step, source: Path, output: Path, parameters: dict[str, Any], kernel_name: str,
                 cwd: Path, fp: str | Callable[[], str]) -> float:
    """Execute one notebook with papermill; returns seconds; StudyStepError on failure. ``fp`` (or a callable
    giving it after the run) is stored in the executed notebook's metadata."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(source), str(output), parameters=parameters, kernel_name=kernel_name,
                                   cwd=str(cwd), progress_bar=False, log_output=False,
                                   extra_arguments=["--IPKernelApp.log_level=CRITICAL"])  # quiet kernel start-up
    except PapermillExecutionError as exc:
        raise StudyStepError(describe_failure(step, exc, output), step.notebook, step.encoder,
                             exc.cell_index) from None
    except Exception as exc:  # kernel died, bad notebook: still say which step
        raise StudyStepError(f"notebook {step.notebook}.ipynb{_for_encoder(step)} could not run: "
                             f"{type(exc).__name__}: {exc}", step.notebook, step.encoder) from exc
    seconds = time.perf_counter() - start
    nb = nbformat.read(output, as_version=4)
    prepare_chapter(nb, step.title)
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
    log: Callable[[str], None]


def run_step(ctx: StudyContext, step: Step, encoders: Sequence[str], editions: Sequence[str] = (),
             index: str = "") -> tuple[str, str, float]:
    """Execute ``step`` unless its executed copy is up to date (and not ``force``): (label, status, seconds)."""
    source = ctx.sources[step.notebook]
    output = step.output(ctx.root / "book")
    params = step_parameters(step, encoders, ctx.overrides, ctx.accepted[step.notebook], ctx.force)
    if step.notebook == FINDINGS:
        params["editions"] = list(editions)

    def current() -> str:
        inputs = files_digest(step_inputs(step, ctx.root, encoders, ctx.overrides, editions), ctx.root)
        return fingerprint(source, params, ctx.library, inputs)

    if not ctx.force and executed_fingerprint(output) == current():
        ctx.log(f"[study {index}] {step.label:<34} reused (unchanged)")
        return step.label, "reused", 0.0
    ctx.log(f"[study {index}] {step.label:<34} running ...")
    # a benchmark chapter times alone on its device: chains sharing it take its lock (device_share)
    with device_share.timing_lock(ctx.log) if step.notebook == BENCHMARK else contextlib.nullcontext():
        seconds = execute_step(step, source, output, params, ctx.kernel_name, ctx.root, current)
    ctx.log(f"[study {index}] {step.label:<34} done in {seconds:6.1f} s")
    return step.label, "executed", seconds


def recorded_editions(root: Path, exclude: Sequence[str] = ()) -> dict[str, list[str]]:
    """{profile: encoders} of the complete recorded editions under book/recorded/."""
    out = {}
    book_dir = Path(root) / "book"
    for profile in PROFILES:
        if profile in exclude or not records_edition(profile) or not Step(SETUP, None, profile).output(book_dir).is_file():
            continue
        record = edition_record_path(book_dir, profile)
        listed = json.loads(record.read_text()).get("encoders", []) if record.is_file() else []  # timm ones too
        encoders = [e for e in dict.fromkeys([*ENCODERS, *listed])
                    if all(Step(nb, e, profile).output(book_dir).is_file() for nb in PER_ENCODER)]
        if encoders:
            out[profile] = encoders
    return out


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def run_study(profile: str = "smoke", encoders: Sequence[str] | None = None,
              overrides: dict[str, Any] | None = None, force: bool = False, book: bool = True,
              root: str | os.PathLike = PROJECT_ROOT, log: Callable[[str], None] = print,
              gpus: Sequence[str] | None = None, encoder_steps_only: bool = False) -> dict[str, Any]:
    """Run one edition, the recorded editions' discussions and the findings, and build the book. ``root``: the
    folder of notebooks/, book/ and _config.yml. ``gpus``: each encoder's chain in its own process on that
    device. Returns {"steps": [(label, status, seconds)], "failed", "html"}."""
    root = Path(root).resolve()
    encoders = list(encoders or ENCODERS)
    overrides = dict(overrides or {})
    sources = {nb: root / "notebooks" / f"{nb}.ipynb" for nb in NOTEBOOKS}
    accepted = {nb: notebook_parameters(path) for nb, path in sources.items()}
    check_overrides(profile, encoders, overrides, {n for names in accepted.values() for n in names})
    if needs_cuda(profile) and overrides.get("device", "cuda") != "cpu" and not cuda_available():
        raise ValueError(f"--profile {profile} needs a CUDA GPU and this machine has none. Its recorded edition "
                         f"(book/recorded/{profile}/, if committed) is included in every book as it was executed: "
                         "build the book with `make book` (the smoke profile).")
    if gpus is not None and len(gpus) != len(encoders):
        raise ValueError(f"--gpus: {len(gpus)} entries for {len(encoders)} encoders {encoders}; give one each")
    ctx = StudyContext(root, sources, accepted, overrides, kernel_for_this_python(), library_hash(), force, log)
    os.environ.setdefault("MVLIP_COMMAND", f"python -m mvlip_utils.study --profile {profile}")
    t0 = time.perf_counter()
    log(f"[study] profile={profile} encoders={encoders} overrides={overrides or '{}'} kernel={ctx.kernel_name} "
        f"force={force}" + (f" gpus={list(gpus)}" if gpus else ""))
    report: list[tuple[str, str, float]] = []
    failed: list[str] = []
    steps = [s for s in plan(encoders, profile) if s.encoder or not encoder_steps_only]
    seeds = study_config(profile, overrides).seeds
    # the discussion reads the edition's record (write_edition_record): its seeds, steps and GPUs
    if gpus is None:
        for i, step in enumerate(steps, 1):
            if step.notebook == DISCUSSION:
                write_edition_record(root, profile, encoders, seeds, gpus)
            report.append(run_step(ctx, step, encoders, index=f"{i:2d}/{len(steps)}"))
    else:
        report.append(run_step(ctx, steps[0], encoders, index="setup"))
        chains, failed = run_chains_in_parallel(ctx, profile, encoders, gpus)
        report += chains
        write_edition_record(root, profile, encoders, seeds, gpus)
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
    html = None
    if book and not encoder_steps_only:
        for other, other_encoders in editions.items():
            if records_edition(other):
                copy_recorded_chapters(root, other, other_encoders)
        toc = root / "book" / "executed" / "_toc.yml"
        toc.write_text(toc_text(editions, root))
        tb = time.perf_counter()
        html = build_book(root, toc, log=log)
        log(f"[study] book built in {time.perf_counter() - tb:.1f} s: {html / 'index.html'}")
    total = time.perf_counter() - t0
    log(f"[study] total {total:.1f} s ({total / 60:.1f} min)")
    if failed:
        raise StudyStepError(f"encoder chain(s) failed: {', '.join(failed)} (the others finished; see above)",
                             TRAIN, failed[0])
    return {"steps": report, "failed": failed, "html": html}


def run_chains_in_parallel(ctx: StudyContext, profile: str, encoders: Sequence[str],
                           gpus: Sequence[str]) -> tuple[list[tuple[str, str, float]], list[str]]:
    """Each encoder's chain in its own study process pinned to its GPU: (the chains' steps, failed encoders)."""
    force = ["--force"] if ctx.force else []
    params = [arg for key, value in ctx.overrides.items() for arg in ("-p", f"{key}={value!r}")]
    jobs = {encoder: [sys.executable, "-m", "mvlip_utils.study", "--profile", profile, "--encoders", encoder,
                      "--encoder-steps-only", "--no-book", "--root", str(ctx.root), *force, *params]
            for encoder in encoders}
    for line in device_share.sharing_lines(encoders, gpus):
        ctx.log(f"[study] {line}")
    env = {encoder: device_share.chain_env(encoder, encoders, gpus) for encoder in encoders}
    report: list[tuple[str, str, float]] = []

    def collect(_: str, line: str) -> None:
        match = re.search(r"\] (.+?)\s+(reused|done in\s+([\d.]+) s)", line)
        if match:
            report.append((match.group(1).strip(), "reused" if match.group(2) == "reused" else "executed",
                           float(match.group(3) or 0.0)))

    failed = run_pinned(jobs, gpus, ctx.root, ctx.log, collect, env)
    return report, failed


def gpus_argument(value: str | None, n_encoders: int, encoder_steps_only: bool = False) -> list[str] | None:
    """``--gpus``: "auto" -> ``device_share.auto_devices``, "none" or empty -> None (in turn), else the entries."""
    if encoder_steps_only or not value or value.strip().lower() == "none":
        return None
    if value.strip().lower() == "auto":
        return device_share.auto_devices(n_encoders)
    return [g.strip() for g in value.split(",")]


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: a bad parameter or encoder exits 2 (``error: ...``), a failing notebook or book 1."""
    parser = CommandLineParser(prog="python -m mvlip_utils.study", description=__doc__.split("\n\n")[0],
                               epilog=parameter_help_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke", choices=list(PROFILES))
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), metavar="ENCODER",
                        help=f"image towers to run: the paper's {list(ENCODERS)} (default: all three) and any timm "
                             "image model by name, e.g. convnext_atto (run at its own size, beyond the paper)")
    parser.add_argument("--force", action="store_true", help="execute every notebook again and retrain")
    parser.add_argument("--no-book", action="store_true", help="run the notebooks, do not build the book")
    parser.add_argument("--gpus", default="auto", metavar="LIST",
                        help="one entry per encoder, e.g. 0,1,2: each encoder's chain in its own process on that "
                             "GPU (the same index twice shares a GPU: the benchmark chapters there run one at a time; "
                             "'cpu' runs a chain without one); 'auto' (the default): one chain per visible GPU, "
                             "shared round-robin when there are fewer GPUs than encoders, and the encoders in turn "
                             "in one process when one GPU or none is visible; 'none': always in turn")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter of every notebook (e.g. -p epochs=2 -p device=cpu); the "
                             "parameters are listed below")
    parser.add_argument("--root", default=str(PROJECT_ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--encoder-steps-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("MVLIP_COMMAND", "python -m mvlip_utils.study " + " ".join(
        argv if argv is not None else sys.argv[1:]))
    try:
        gpus = gpus_argument(args.gpus, len(args.encoders), args.encoder_steps_only)
        if args.gpus == "auto" and not args.encoder_steps_only:
            print("[study] --gpus auto: " + ("one chain per GPU, on " + ",".join(gpus) if gpus
                                             else "one GPU or none visible, the encoders in turn"))
        run_study(args.profile, args.encoders, parse_overrides(args.param), force=args.force,
                  book=not args.no_book, root=args.root, gpus=gpus, encoder_steps_only=args.encoder_steps_only)
    except USER_ERRORS as exc:
        return user_error_exit(exc)
    except RuntimeError as exc:  # a failing notebook (StudyStepError) or book
        print(f"\n[study] FAILED: {exc}", file=sys.stderr)
        return 1
    return 0
