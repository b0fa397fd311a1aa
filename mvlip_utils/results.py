"""Where a run writes, and reading results back.

One folder per run, fixed by the parameters: ``<results_dir>/<profile>/<encoder>/`` holding
``config.json``, ``history.csv`` (a row per epoch), ``metrics.json`` (final epoch),
``per_class.csv``, ``confusion.csv``, ``predictions.csv``, ``benchmark.json`` and the git-ignored
``checkpoint.pt``. ``check_run_consistency`` says where a folder's files disagree.
The paper's reference numbers live in ``mvlip_utils/paper_reference/``. JSON is written strictly: a
number that is not defined (NaN, such as ``top5`` with five classes or fewer) is null there, an empty
field in ``history.csv``, and NaN again once read back with :func:`load_metrics` / :func:`load_history`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_zeroshot_loss", "accuracy", "top5",
                   "precision_weighted", "recall_weighted", "f1_weighted"]
METRIC_KEYS = ["accuracy", "top5", "precision_weighted", "recall_weighted", "f1_weighted",
               "precision_macro", "recall_macro", "f1_macro", "n_val", "n_classes", "epochs"]


def run_dir(config: Any) -> Path:
    """``results_dir/profile/encoder`` for a StudyConfig (or anything with those attributes)."""
    return Path(config.results_dir) / config.profile / config.encoder


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old or the new file, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """``obj`` as strict JSON: NaN and infinities are written as null (as benchmark.write_benchmark does)."""
    text = json.dumps(_finite_or_none(obj), indent=2, sort_keys=False, default=_jsonable, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist (has that run finished?)")
    return json.loads(path.read_text())


def _finite_or_none(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, +-inf), also inside dicts, lists and tuples, as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(item) for item in value]
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return _finite_or_none(value.item())
    if hasattr(value, "tolist"):
        return _finite_or_none(value.tolist())
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def write_history(run: Path, rows: Iterable[dict[str, Any]]) -> None:
    frame = pd.DataFrame(list(rows), columns=HISTORY_COLUMNS)
    atomic_write_bytes(Path(run) / "history.csv", frame.to_csv(index=False).encode())


def load_history(run: str | os.PathLike) -> pd.DataFrame:
    path = Path(run) / "history.csv"
    if not path.is_file():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist (has that run trained?)")
    return pd.read_csv(path)


def load_metrics(run: str | os.PathLike) -> dict[str, Any]:
    """The run's metrics.json; a metric written as null (not defined for the run, such as ``top5`` with
    five classes or fewer) comes back as NaN, as in the history."""
    return {key: math.nan if value is None else value
            for key, value in read_json(Path(run) / "metrics.json").items()}


def load_config(run: str | os.PathLike) -> dict[str, Any]:
    return read_json(Path(run) / "config.json")


def is_finished(run: str | os.PathLike) -> bool:
    return (Path(run) / "metrics.json").is_file()


# The files a training run writes into its folder (checkpoint.pt aside); benchmark.json is 04_benchmark's
RUN_FILES = ("config.json", "history.csv", "metrics.json", "per_class.csv", "confusion.csv", "predictions.csv")


def check_run_consistency(run: str | os.PathLike) -> list[str]:
    """What in the run folder ``run`` contradicts itself, as readable problems ([] when nothing does).

    A run that has started has a ``config.json``; its ``history.csv`` numbers its epochs 1..n with no more
    rows than ``config.json``'s ``epochs``. A finished run (``metrics.json``) has exactly that many rows,
    ``metrics.json``'s ``epochs`` and accuracy are those of the last row, and ``per_class.csv``,
    ``predictions.csv`` and ``config.json`` count the same classes and validation images. Only reads."""
    run = Path(run)
    present = {name: (run / name).is_file() for name in RUN_FILES}
    if not any(present.values()):
        return []
    if not present["config.json"]:
        return [f"config.json is missing beside {sorted(n for n, there in present.items() if there)}"]
    try:
        config = load_config(run)
        history = load_history(run) if present["history.csv"] else None
        metrics = load_metrics(run) if present["metrics.json"] else None
    except (OSError, ValueError, pd.errors.ParserError) as exc:  # JSONDecodeError is a ValueError
        return [f"unreadable run file: {type(exc).__name__}: {exc}"]
    problems = _history_problems(config, history)
    if metrics is not None:
        problems += _finished_problems(run, config, history, metrics)
    return problems


def _history_problems(config: dict[str, Any], history: pd.DataFrame | None) -> list[str]:
    if history is None:
        return []
    epochs = list(history["epoch"]) if "epoch" in history else None
    if epochs != list(range(1, len(history) + 1)):
        return [f"history.csv's epochs are {epochs}, not 1..{len(history)}"]
    if len(history) > config.get("epochs", 0):
        return [f"history.csv has {len(history)} epoch(s) but config.json says epochs={config.get('epochs')}"]
    return []


def _finished_problems(run: Path, config: dict[str, Any], history: pd.DataFrame | None,
                       metrics: dict[str, Any]) -> list[str]:
    if history is None:
        return ["metrics.json is there but history.csv is missing"]
    problems = []
    if not config.get("epochs") == len(history) == metrics.get("epochs"):
        problems.append(f"epochs disagree: config.json says {config.get('epochs')}, history.csv has "
                        f"{len(history)} row(s), metrics.json says {metrics.get('epochs')}")
    elif "accuracy" in metrics and len(history) and not abs(history["accuracy"].iloc[-1] - metrics["accuracy"]) <= 1e-6:
        problems.append(f"metrics.json's accuracy {metrics['accuracy']} is not that of history.csv's last epoch "
                        f"({history['accuracy'].iloc[-1]})")
    for name, key in (("predictions.csv", "n_val"), ("per_class.csv", "n_classes"), ("confusion.csv", "n_classes")):
        if not (run / name).is_file():
            problems.append(f"metrics.json is there but {name} is missing")
            continue
        rows = len(pd.read_csv(run / name))
        if key in metrics and rows != metrics[key]:
            problems.append(f"{name} has {rows} row(s), metrics.json says {key}={metrics[key]}")
    problems += [f"metrics.json says {key}={metrics[key]}, config.json {key}={config[key]}"
                 for key in ("n_val", "n_classes") if key in metrics and key in config and metrics[key] != config[key]]
    return problems


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``; None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str]:
    import torch

    out = {"python": platform.python_version(), "torch_build": torch.__version__}
    for name in ("torch", "torchvision", "timm", "open_clip_torch", "mambavision", "numpy", "scikit-learn"):
        out[name] = package_version(name) or "not installed"
    return out


def device_description(device: str) -> str:
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def load_all_runs(results_dir: str | os.PathLike, profile: str, encoders: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Every finished run of ``profile``: {encoder: {config, history, metrics, run_dir}}; missing runs are left out."""
    runs = {}
    for encoder in encoders:
        run = Path(results_dir) / profile / encoder
        if is_finished(run):
            runs[encoder] = {"run_dir": run, "config": load_config(run), "history": load_history(run),
                             "metrics": load_metrics(run)}
    return runs


def paper_reference() -> dict[str, Any]:
    """The paper's Tables 1-2 and claims (paper_tables.json) plus the authors' per-epoch logs (a DataFrame)."""
    folder = resources.files("mvlip_utils") / "paper_reference"
    tables = json.loads((folder / "paper_tables.json").read_text())
    with (folder / "authors_logs.csv").open() as handle:
        tables["authors_logs"] = pd.read_csv(handle)
    return tables
