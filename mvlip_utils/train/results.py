"""Where a run writes, how results are written (JSON with provenance), and reading them back.

One folder per run, fixed by the parameters: ``<results_dir>/<profile>/<encoder>/`` holding
``config.json``, ``history.csv`` (a row per epoch), ``timings.csv`` (seconds per epoch and stage),
``metrics.json`` (final epoch), ``per_class.csv``, ``confusion.csv``, ``predictions.csv``,
``step_check.json`` (the faster training step against the eager one), ``benchmark.json`` and the
git-ignored ``checkpoint.pt``. Measurement files carry their provenance (``collect_provenance``: date,
command, code commit, GPU, driver, versions), so a number never travels without what produced it. ``check_run_consistency`` says where a
folder's files disagree.
The paper's reference numbers live in ``mvlip_utils/paper_reference/``. JSON is written strictly: a
number that is not defined (NaN, such as ``top5`` with five classes or fewer) is null there, an empty
field in ``history.csv``, and NaN again once read back with :func:`load_metrics` / :func:`load_history`.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import platform
import shlex
import socket
import subprocess
import sys
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from ..settings.encoders import encoder_folder
from ..data.shared_files import atomic_path

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_zeroshot_loss", "accuracy", "top5",
                   "precision_weighted", "recall_weighted", "f1_weighted"]
METRIC_KEYS = ["accuracy", "top5", "precision_weighted", "recall_weighted", "f1_weighted",
               "precision_macro", "recall_macro", "f1_macro", "n_val", "n_classes", "epochs"]


def run_dir(config: Any) -> Path:
    """``results_dir/profile/encoder`` for a StudyConfig (or anything with those attributes); an extra
    encoder's folder is its file-safe name (``encoders.encoder_folder``)."""
    return Path(config.results_dir) / config.profile / encoder_folder(config.encoder)


def edition_dir(config: Any) -> Path:
    """``results_dir/profile``: the folder of one edition's runs (and its study_projection.json)."""
    return Path(config.results_dir) / config.profile


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old or the new file, never half of one."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON (NaN and infinities become null; numpy and torch scalars, arrays, paths converted),
    written atomically."""
    text = json.dumps(jsonable(obj), indent=2, sort_keys=False, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist (has that run finished?)")
    return json.loads(path.read_text())


def jsonable(obj: Any) -> Any:
    """``obj`` with every value JSON can hold: DataFrames as lists of records, dataclasses as dicts, numpy/torch scalars and
    arrays as numbers and lists, non-finite floats as None, paths, devices and dtypes as strings."""
    if isinstance(obj, pd.DataFrame):
        return [jsonable(r) for r in obj.to_dict(orient="records")]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.ndarray) or (hasattr(obj, "tolist") and hasattr(obj, "dtype")):
        return jsonable(obj.tolist())
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path) or type(obj).__name__ in ("device", "dtype"):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


# how the book's tables name the columns of history.csv and timings.csv
HISTORY_LABELS = {"train_loss": "train loss", "val_loss": "val loss", "val_zeroshot_loss": "val zero-shot loss",
                  "top5": "top-5", "precision_weighted": "precision (weighted)", "recall_weighted": "recall (weighted)",
                  "f1_weighted": "F1 (weighted)"}
TIMING_LABELS = {"train_seconds": "train s", "train_images": "train images", "validation_seconds": "validation s",
                 "val_images": "val images", "checkpoint_seconds": "checkpoint wait s",
                 "checkpoint_write_seconds": "checkpoint write s", "loader_start_seconds": "first batch s", "epoch_seconds": "epoch s",
                 "setup_seconds": "set-up s", "world_size": "ranks", "peak_memory_gib": "peak GiB"}
TIMING_COLUMNS = ["epoch", "train_seconds", "train_images", "validation_seconds", "val_images", "checkpoint_seconds",
                  "checkpoint_write_seconds", "loader_start_seconds", "epoch_seconds", "setup_seconds", "world_size",
                  "peak_memory_gib"]


def write_timings(run: Path, rows: Iterable[dict[str, Any]]) -> None:
    """timings.csv: the seconds of each epoch's stages (train.train_run writes a row per epoch trained)."""
    frame = pd.DataFrame(list(rows), columns=TIMING_COLUMNS)
    atomic_write_bytes(Path(run) / "timings.csv", frame.to_csv(index=False).encode())


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
CHECKPOINT = "checkpoint.pt"  # written after every epoch (run_folder.CheckpointWriter)
RUN_FILES = ("config.json", "history.csv", "timings.csv", "metrics.json", "per_class.csv", "confusion.csv",
             "predictions.csv", "step_check.json")


def read_timings(run: Path, through_epoch: int) -> list[dict[str, Any]]:
    """The timings.csv rows of the epochs a resumed run already trained (1..through_epoch)."""
    path = Path(run) / "timings.csv"
    if through_epoch == 0 or not path.is_file():
        return []
    frame = pd.read_csv(path)
    return frame[frame["epoch"] <= through_epoch].to_dict(orient="records")


def clear_run(run: Path) -> None:
    """Delete what a training run wrote into ``run`` (its checkpoint and results files; benchmark.json,
    04_benchmark's measurement of the tower, stays): the start of a run from scratch."""
    for name in (CHECKPOINT, *RUN_FILES):
        (Path(run) / name).unlink(missing_ok=True)


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
    """Python, torch (and its CUDA), triton and the study's libraries, as installed."""
    import torch

    out = {"python": platform.python_version(), "torch_build": torch.__version__, "cuda": torch.version.cuda}
    for name in ("torch", "torchvision", "triton", "timm", "open_clip_torch", "mambavision", "numpy",
                 "scikit-learn"):
        out[name] = package_version(name) or "not installed"
    return out


def device_description(device: Any) -> str:
    """'NVIDIA H200' for a CUDA device; 'CPU (x86_64, 2 cores)' otherwise (never the host name)."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        dev = torch.device(device)
        return torch.cuda.get_device_name(dev if dev.index is not None else torch.cuda.current_device())
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


# ------------------------------------------------------------------------------------- provenance
def git_state() -> dict[str, Any]:
    """{commit, dirty, source} of the code that runs. The environment variables MVLIP_GIT_COMMIT and
    MVLIP_GIT_DIRTY ("0"/"1"), when the command that runs the code sets them (a copy of the working tree sent
    to a GPU machine, whose .git, if any, is not the code's), win; otherwise git in the repository this
    package lives in; None where neither is known."""
    commit = os.environ.get("MVLIP_GIT_COMMIT") or None
    if commit:
        dirty = os.environ.get("MVLIP_GIT_DIRTY")
        return {"commit": commit, "dirty": None if dirty is None else dirty not in ("0", "false", ""),
                "source": "environment"}
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode == 0 and head.stdout.strip():
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                    capture_output=True, text=True, timeout=30)
            return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0
                    else None, "source": "git"}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"commit": None, "dirty": None, "source": None}


def gpu_driver() -> str | None:
    """The NVIDIA driver version (nvidia-smi), None where there is none."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def run_command() -> str:
    """The command that produced a result: MVLIP_COMMAND (set by the study runner for its notebooks), else
    this process's command line; the host name is masked."""
    command = os.environ.get("MVLIP_COMMAND") or shlex.join(
        [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"] + sys.argv[1:])
    host = socket.gethostname()
    return command.replace(host, "<host>") if host and len(host) > 2 else command


def collect_provenance(device: Any = None, **extra: Any) -> dict[str, Any]:
    """Everything that produced a measurement, free of the host name: date (UTC), command, code commit and
    whether the tree had changes, OS, CPU count, GPU name(s), NVIDIA driver, CUDA and library versions,
    plus ``extra``."""
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    git = git_state()
    out = dict(date_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), command=run_command(),
               git_commit=git["commit"], git_dirty=git["dirty"], python=platform.python_version(),
               os=f"{platform.system()} {platform.release()}", machine=platform.machine(), cpu_count=os.cpu_count(),
               gpus=gpus, gpu_name=gpus[0] if gpus else None, driver=gpu_driver() if gpus else None,
               device_name=device_description(device) if device is not None else None, versions=versions())
    out.update(extra)
    return out


BENCHMARK_FORMAT = "mvlip-benchmark-v1"


def write_benchmark(path: str | os.PathLike, records: Any, provenance: Mapping[str, Any] | None = None) -> Path:
    """Write ``{"format", "provenance", "records"}`` as strict JSON to ``path``: ``records`` a list of dicts,
    a DataFrame or one dict; ``provenance`` merged over ``collect_provenance()``."""
    if isinstance(records, Mapping):
        records = [records]
    if not isinstance(records, (list, tuple, pd.DataFrame)):
        raise TypeError(f"parameter records must be a list of dicts, a dict or a DataFrame, got {type(records).__name__}")
    prov = collect_provenance()
    prov.update(dict(provenance or {}))
    write_json(path, {"format": BENCHMARK_FORMAT, "provenance": prov, "records": records})
    return Path(path)


def read_benchmark(path: str | os.PathLike) -> dict[str, Any]:
    """A ``write_benchmark`` file -> dict(format, provenance, records, frame=DataFrame of the records)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file not found: {path}")
    blob = json.loads(path.read_text())
    if not isinstance(blob, dict) or blob.get("format") != BENCHMARK_FORMAT or "records" not in blob:
        raise ValueError(f"{path}: not a {BENCHMARK_FORMAT} benchmark file")
    blob["frame"] = pd.DataFrame(blob["records"])
    return blob


RUN_STATES = ("finished", "missing", "partial", "failed")


def run_state(run: str | os.PathLike) -> tuple[str, str]:
    """What the run folder ``run`` holds, read from its training files (``RUN_FILES``), as (state, detail):

    - ``finished``: config.json, history.csv and metrics.json readable, with the same number of epochs;
    - ``missing``: none of the training files (the run never started, or its folder is gone);
    - ``partial``: config.json and 1..epochs-1 epochs in history.csv, no metrics.json (stopped, or killed,
      after an epoch's checkpoint); detail "1 of 2 epochs";
    - ``failed``: anything else that a run left: no epoch finished, every epoch trained but no final
      evaluation (metrics.json), files that cannot be read, or that disagree on the number of epochs;
      detail says which.

    (What 04_benchmark writes, benchmark.json, is not part of the state: the speed verdicts name its absence.)"""
    run = Path(run)
    present = [name for name in RUN_FILES if (run / name).is_file()]
    if not present:
        return "missing", "no run files"
    if "config.json" not in present:
        return "failed", f"config.json is missing beside {present}"
    try:
        config = load_config(run)
        history = load_history(run) if "history.csv" in present else None
        metrics = load_metrics(run) if "metrics.json" in present else None
    except (OSError, ValueError, pd.errors.ParserError) as exc:  # JSONDecodeError is a ValueError
        return "failed", f"a run file cannot be read ({type(exc).__name__})"
    epochs, done = config.get("epochs"), 0 if history is None else len(history)
    if metrics is not None:
        if history is None:
            return "failed", "metrics.json is there but history.csv is missing"
        if metrics.get("epochs", done) != done or (epochs is not None and epochs != done):
            return "failed", (f"its files disagree: config.json says {epochs} epochs, history.csv has {done}, "
                              f"metrics.json says {metrics.get('epochs')}")
        return "finished", f"{done} of {epochs} epochs" if epochs is not None else f"{done} epochs"
    if done == 0:
        return "failed", "it stopped before its first epoch ended"
    if epochs is None or done < epochs:
        return "partial", f"{done} of {epochs} epochs"
    return "failed", f"it trained {done} of {epochs} epochs but has no final evaluation (no metrics.json)"


def run_state_phrase(state: str, detail: str) -> str:
    """How a sentence says a run's state: "is missing", "is partial: 1 of 2 epochs", "failed: ..."."""
    return {"finished": "is finished", "missing": "is missing", "partial": f"is partial: {detail}"}.get(
        state, f"failed: {detail}")


def unfinished_runs(results_dir: str | os.PathLike, profile: str, encoders: Iterable[str]) -> dict[str, str]:
    """{encoder: how its run is not finished} for every encoder of ``profile`` whose run is not
    (``run_state_phrase``: "is missing", "failed: ...", "is partial: 1 of 2 epochs")."""
    out = {}
    for encoder in encoders:
        state, detail = run_state(Path(results_dir) / profile / encoder_folder(encoder))
        if state != "finished":
            out[encoder] = run_state_phrase(state, detail)
    return out


def load_all_runs(results_dir: str | os.PathLike, profile: str, encoders: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Every finished run of ``profile`` (``run_state``): {encoder: {run_dir, config, history, metrics, and
    where they exist timings (DataFrame), step_check (dict), benchmark (DataFrame of records),
    benchmark_provenance}}; missing, partial and failed runs are left out (``unfinished_runs`` says why)."""
    runs = {}
    for encoder in encoders:
        run = Path(results_dir) / profile / encoder_folder(encoder)
        if run_state(run)[0] != "finished":
            continue
        entry: dict[str, Any] = {"run_dir": run, "config": load_config(run), "history": load_history(run),
                                 "metrics": load_metrics(run), "timings": None, "step_check": None,
                                 "benchmark": None, "benchmark_provenance": None}
        if (run / "timings.csv").is_file():
            entry["timings"] = pd.read_csv(run / "timings.csv")
        if (run / "step_check.json").is_file():
            entry["step_check"] = read_json(run / "step_check.json")
        if (run / "benchmark.json").is_file():
            blob = read_benchmark(run / "benchmark.json")
            entry["benchmark"], entry["benchmark_provenance"] = blob["frame"], blob["provenance"]
        runs[encoder] = entry
    return runs


def run_files(run: str | os.PathLike) -> list[Path]:
    """The small files of a run folder that later notebooks read (what the book's reuse check hashes and
    what a recorded edition commits); checkpoints and per-image files are left out."""
    return [Path(run) / name for name in ("config.json", "history.csv", "timings.csv", "metrics.json",
                                          "per_class.csv", "step_check.json", "flops.json", "benchmark.json")]


def paper_reference() -> dict[str, Any]:
    """The paper's Tables 1-2 and claims (paper_tables.json) plus the authors' per-epoch logs (a DataFrame)."""
    folder = resources.files("mvlip_utils") / "paper_reference"
    tables = json.loads((folder / "paper_tables.json").read_text())
    with (folder / "authors_logs.csv").open() as handle:
        tables["authors_logs"] = pd.read_csv(handle)
    return tables
