"""Parameters from a notebook's parameters cell or a command line into StudyConfig and BenchSettings; the
parameters cells themselves, and the command lines' one-line errors."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

from .notebooks import BENCHMARK, EVALUATE, FINDINGS, PER_ENCODER, TRAIN
from .profiles import ENCODERS, BenchSettings, StudyConfig, get_bench_settings, get_config, help_text, user_fields


def work_in_project_root() -> None:
    """Make the repository root the working folder when a notebook runs from ``notebooks/`` (as JupyterLab starts
    it), so that ``data/`` and ``results/`` are the repository's."""
    here = Path.cwd()
    if here.name == "notebooks" and (here.parent / "mvlip_utils").is_dir() and not (here / "mvlip_utils").is_dir():
        os.chdir(here.parent)


def config_from_parameters(namespace: Mapping[str, Any], **fixed: Any):
    """The StudyConfig of ``namespace`` (``profile`` and any field; None = the profile's value) and ``fixed``."""
    from .reproducibility import prepare_environment

    values = {f.name: namespace[f.name] for f in fields(StudyConfig) if f.name != "profile" and f.name in namespace}
    values.update(fixed)
    config = get_config(namespace["profile"], **values)
    # a deterministic run needs CUBLAS_WORKSPACE_CONFIG before the notebook's first cuBLAS call: set it now
    prepare_environment(config.deterministic)
    return config


def bench_from_parameters(namespace: Mapping[str, Any]):
    """The BenchSettings of a notebook's parameters (None = the profile's value)."""
    values = {f.name: namespace[f.name] for f in fields(BenchSettings) if f.name in namespace}
    return get_bench_settings(namespace["profile"], **values)


def parameter_names() -> list[str]:
    """Every StudyConfig field a user sets: each notebook's parameters cell defines all of them."""
    return user_fields(StudyConfig)


# Parameters a notebook has besides the profile, the encoder(s), StudyConfig's and BenchSettings' fields
NOTEBOOK_EXTRAS: dict[str, tuple[tuple[str, Any, str], ...]] = {
    FINDINGS: (("editions", ["smoke", "speed"], "editions (profiles) the findings read, from the least to the "
                                                 "most faithful; one without runs is left out"),),
    TRAIN: (("resume", True, "False: delete the checkpoint and train from scratch"),
            ("progress", False, "tqdm progress bars (handy in JupyterLab)")),
    EVALUATE: (("n_examples", 8, "example predictions shown with their images"),),
}
BENCH_FIELDS = {TRAIN: ("step_check_images", "step_check_steps", "step_profile_steps", "step_check_deterministic"),
                BENCHMARK: ("warmup", "repeats", "eval_repeats", "eval_workers", "best_batch", "resolutions",
                            "sweep_batch", "sweep_precision")}


def parameters_cell_source(notebook: str) -> str:
    """The parameters cell of ``notebook``, from the fields' help texts; a test checks every notebook against it."""
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
        name for name in user_fields(StudyConfig) if name not in ("profile", "encoder")]
    lines.append("# Run parameters (mvlip_utils.settings.profiles.StudyConfig); None = the profile's value")
    lines += [line(n, None, help_text(StudyConfig, n)) for n in study_fields]
    if notebook in BENCH_FIELDS:
        lines.append("# Measuring parameters (mvlip_utils.settings.profiles.BenchSettings); None = the profile's value")
        lines += [line(n, None, help_text(BenchSettings, n)) for n in BENCH_FIELDS[notebook]]
    return "\n".join(lines)


class CommandLineParser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: ...``, exit status 2) and no abbreviated options."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)


def user_error_exit(exc: BaseException) -> int:
    """Print a user error as one ``error: ...`` line on stderr (its lines joined with '; '); return exit status 2."""
    print("error: " + "; ".join(part.strip() for part in str(exc).splitlines() if part.strip()), file=sys.stderr)
    return 2


def parameter_help_epilog() -> str:
    """Every run parameter (StudyConfig) and measuring parameter (BenchSettings) with its help text."""
    lines = ["run parameters (StudyConfig; default: the profile's):"]
    lines += [f"  {name:<26} {help_text(StudyConfig, name)}" for name in user_fields(StudyConfig)]
    lines += ["measuring parameters (BenchSettings; the benchmark and training notebooks):"]
    lines += [f"  {f.name:<26} {help_text(BenchSettings, f.name)}" for f in fields(BenchSettings)]
    return "\n".join(lines)
