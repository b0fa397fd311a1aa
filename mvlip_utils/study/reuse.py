"""When an executed notebook is reused instead of run again: its fingerprint digests the notebook, its
parameters, the ``mvlip_utils`` sources and the content of every file it reads (``step_inputs``: the run
files it writes or shows, an edition's run files for the discussion, every edition's for the findings, and
the separate measurements a discussion reports), so that a change to any of them runs it again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..settings.notebooks import BENCHMARK, DISCUSSION, FINDINGS, SETUP, Step, edition_record_path
from ..settings.params import parameter_names

PACKAGE_DIR = Path(__file__).resolve().parents[1]
FINGERPRINT_IGNORES = ("resume",)  # parameters that change how a step runs, not what it produces


def library_hash() -> str:
    """Hash of the mvlip_utils sources and reference data: a change re-executes the notebooks."""
    sources = [p for p in PACKAGE_DIR.rglob("*")
               if p.is_file() and p.suffix in {".py", ".json", ".csv"} and "__pycache__" not in p.parts]
    return files_digest(sources, PACKAGE_DIR)


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


def _config(profile: str, overrides: dict[str, Any], **fields: Any):
    """The StudyConfig of ``profile`` with those of ``overrides`` that are its fields (and ``fields``)."""
    from ..settings.profiles import get_config

    names = set(parameter_names())
    return get_config(profile, **fields, **{k: v for k, v in overrides.items() if k in names})


def edition_folder(root: Path, profile: str, overrides: dict[str, Any]) -> Path:
    """The folder of an edition's runs (``results_dir/<profile>``), as seen from ``root``."""
    from ..train import results

    return Path(root) / results.edition_dir(_config(profile, overrides))


def run_folder(root: Path, profile: str, encoder: str, overrides: dict[str, Any]) -> Path:
    """The run folder a step of ``encoder`` writes, as seen from ``root`` (the notebooks' working folder)."""
    from ..train import results

    return Path(root) / results.run_dir(_config(profile, overrides, encoder=encoder))


def step_inputs(step: Step, root: Path, encoders: Sequence[str], overrides: dict[str, Any],
                editions: Sequence[str] = ()) -> list[Path]:
    """The files an executed notebook depends on besides its parameters: the run files it writes or reads
    (train, evaluate, benchmark), every run file of the edition (discussion), of every edition (findings)."""
    from ..train.results import run_files

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
    if step.notebook == DISCUSSION:  # a recorded edition's record: on how many GPUs its chains ran
        files.append(edition_record_path(Path(root) / "book", step.profile))
    for profile in profiles:
        if step.notebook == FINDINGS:
            files.append(edition_folder(root, profile, overrides) / "study_projection.json")
        for encoder in encoders:
            files += run_files(run_folder(root, profile, encoder, overrides))
    return files
