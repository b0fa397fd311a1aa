"""When an executed notebook is reused: its fingerprint digests the notebook, its parameters, the
``mvlip_utils`` sources and every file it reads (``step_inputs``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import nbformat

from ..settings.notebooks import BENCHMARK, FINDINGS, SETUP, Step, edition_record_path
from ..settings.params import parameter_names
from ..settings.profiles import get_config
from ..train.run_folder import ENCODER_FILES, RUN_FILES, edition_dir, edition_files, encoder_dir, run_dir

PACKAGE_DIR = Path(__file__).resolve().parents[1]
FINGERPRINT_IGNORES = ("resume",)  # parameters that change how a step runs, not what it produces


def library_hash() -> str:
    """Hash of the mvlip_utils sources and reference data."""
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
    """Digest of a notebook's source, its parameters (``resume`` aside), the library and ``inputs``."""
    params = {k: v for k, v in parameters.items() if k not in FINGERPRINT_IGNORES}
    digest = hashlib.sha256()
    digest.update(Path(source).read_bytes())
    digest.update(json.dumps(params, sort_keys=True, default=str).encode())
    digest.update(library.encode())
    digest.update(inputs.encode())
    return digest.hexdigest()


def executed_fingerprint(path: Path) -> str | None:
    """The fingerprint of an executed notebook that completed without error, else None."""
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception:  # noqa: BLE001 - a missing or unreadable (half-written) notebook is simply redone
        return None
    pm = nb.metadata.get("papermill", {})
    if pm.get("exception") or not pm.get("end_time"):
        return None
    return nb.metadata.get("mvlip", {}).get("fingerprint")


def study_config(profile: str, overrides: dict[str, Any], **fields: Any):
    """The StudyConfig of ``profile`` with those of ``overrides`` that are its fields (and ``fields``)."""
    names = set(parameter_names())
    return get_config(profile, **fields, **{k: v for k, v in overrides.items() if k in names})


def step_inputs(step: Step, root: Path, encoders: Sequence[str], overrides: dict[str, Any],
                editions: Sequence[str] = ()) -> list[Path]:
    """The files a step reads: the encoder's and its runs' (train, evaluate), benchmark.json (benchmark), the
    edition's (discussion) or every edition's (findings)."""
    if step.notebook == SETUP:
        return []
    if step.encoder:
        config = study_config(step.profile, overrides, encoder=step.encoder)
        folder = Path(root) / encoder_dir(config)
        if step.notebook == BENCHMARK:
            return [folder / "benchmark.json"]
        # not flops.json: a cache the benchmark chapter writes after these steps, decided by parameters and library
        return ([folder / name for name in ENCODER_FILES if name not in ("benchmark.json", "flops.json")]
                + [Path(root) / run_dir(run) / name for run in config.runs() for name in RUN_FILES])
    files: list[Path] = []
    for profile in (editions if step.notebook == FINDINGS else [step.profile]):
        folder = Path(root) / edition_dir(study_config(profile, overrides))
        files += [edition_record_path(Path(root) / "book", profile), folder / "study_projection.json"]
        files += edition_files(folder, encoders)
    return files
