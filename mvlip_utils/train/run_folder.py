"""The run folder: its paths and files, reading them back, a run's state and the refusal of another run.

    <results_dir>/<profile>/          an edition
        <encoder>/                    an encoder: benchmark.json, flops.json, step_check.json
            seed-<seed>/              a run: config.json, history.csv, timings.csv, before_training.json,
                                      metrics.json, per_image.csv.gz, clip_benchmark.json, checkpoint.pt (not committed)

``per_image.csv.gz``: each validation image's path under the dataset, label, prediction, top-1 and top-5
correctness and zero-shot loss. An undefined number (NaN, e.g. top-5 with five classes or fewer) is null in
JSON and NaN again once read back.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd

from ..data.files import atomic_write_bytes, read_json, write_csv, write_json
from ..settings.encoders import encoder_folder
from ..settings.profiles import StudyConfig, changed_parameters
from .provenance import collect_provenance

HISTORY_COLUMNS = ["epoch", "train_loss", "val_loss", "val_zeroshot_loss", "accuracy", "top5",
                   "precision_weighted", "recall_weighted", "f1_weighted"]
TIMING_COLUMNS = ["epoch", "train_seconds", "train_images", "validation_seconds", "val_images", "checkpoint_seconds",
                  "setup_seconds"]
TABLES = {"history.csv": HISTORY_COLUMNS, "timings.csv": TIMING_COLUMNS}
METRIC_KEYS = ["accuracy", "top5", "precision_weighted", "recall_weighted", "f1_weighted",
               "precision_macro", "recall_macro", "f1_macro", "mean_per_class_recall", "zeroshot_loss", "n_val",
               "n_classes"]
CHECKPOINT = "checkpoint.pt"
PER_IMAGE = "per_image.csv.gz"
BEFORE_TRAINING = "before_training.json"
RUN_FILES = ("config.json", "history.csv", "timings.csv", BEFORE_TRAINING, "metrics.json", PER_IMAGE,
             "clip_benchmark.json")
ENCODER_FILES = ("step_check.json", "flops.json", "benchmark.json")
BENCHMARK_FORMAT = "mvlip-benchmark-v1"
_SEED_FOLDER = re.compile(r"seed-(\d+)")


def edition_dir(config: Any) -> Path:
    return Path(config.results_dir) / config.profile


def encoder_dir(config: Any) -> Path:
    return edition_dir(config) / encoder_folder(config.encoder)


def run_dir(config: Any) -> Path:
    return encoder_dir(config) / f"seed-{config.seed}"


def seeds_on_disk(folder: Path) -> list[int]:
    """The seeds of the run folders under an encoder's folder."""
    return sorted(int(m.group(1)) for p in Path(folder).glob("seed-*")
                  if (m := _SEED_FOLDER.fullmatch(p.name)) and p.is_dir())


def write_table(run: Path, name: str, rows: Iterable[dict[str, Any]]) -> None:
    """``run``'s history.csv or timings.csv, in its columns (``TABLES``)."""
    atomic_write_bytes(Path(run) / name, pd.DataFrame(list(rows), columns=TABLES[name]).to_csv(index=False).encode())


def write_final_results(run: Path, config: StudyConfig, evaluation: Mapping[str, Any], images: list[str],
                        dataset: str) -> None:
    """metrics.json, per_image.csv.gz (``images``: each validation image's path under the dataset) and
    clip_benchmark.json (CLIP_benchmark's format) of a finished run."""
    run = Path(run)
    metrics = {key: evaluation[key] for key in METRIC_KEYS}
    per_image = pd.DataFrame({"image": images, **{k: evaluation["per_image"][k] for k in
                                                   ("label", "prediction", "correct", "top5_correct", "loss")}})
    write_csv(run / PER_IMAGE, per_image)
    write_json(run / "clip_benchmark.json", {
        "dataset": dataset, "model": config.encoder, "pretrained": "pretrained" if config.pretrained else "random",
        "task": "zeroshot_classification", "language": "en", "seed": config.seed,
        "metrics": {"acc1": metrics["accuracy"], "acc5": metrics["top5"],
                    "mean_per_class_recall": metrics["mean_per_class_recall"]}})
    write_json(run / "metrics.json", {**metrics, "epochs": config.epochs, "eval_images_per_s": evaluation["images_per_s"]})


def write_benchmark(path: str | os.PathLike, records: Any, provenance: Mapping[str, Any] | None = None) -> Path:
    """``{"format", "provenance", "records"}`` as strict JSON; ``provenance`` merged over ``collect_provenance()``."""
    if isinstance(records, Mapping):
        records = [records]
    if not isinstance(records, (list, tuple, pd.DataFrame)):
        raise TypeError(f"parameter records must be a list of dicts, a dict or a DataFrame, got {type(records).__name__}")
    write_json(path, {"format": BENCHMARK_FORMAT, "provenance": {**collect_provenance(), **dict(provenance or {})},
                      "records": records})
    return Path(path)


def read_benchmark(path: str | os.PathLike) -> dict[str, Any]:
    """A ``write_benchmark`` file -> dict(format, provenance, records, frame=DataFrame of the records)."""
    blob = read_json(path)
    if not isinstance(blob, dict) or blob.get("format") != BENCHMARK_FORMAT or "records" not in blob:
        raise ValueError(f"{path}: not a {BENCHMARK_FORMAT} benchmark file")
    blob["frame"] = pd.DataFrame(blob["records"])
    return blob


def clear_run(run: Path) -> None:
    """Delete what a training run wrote into ``run``: the start of a run from scratch."""
    for name in (CHECKPOINT, *RUN_FILES):
        (Path(run) / name).unlink(missing_ok=True)


def _read_object(path: Path) -> dict[str, Any]:
    blob = read_json(path)
    if not isinstance(blob, dict):
        raise ValueError(f"{path}: not a JSON object")
    return blob


def load_metrics(run: str | os.PathLike) -> dict[str, Any]:
    return {key: math.nan if value is None else value for key, value in _read_object(Path(run) / "metrics.json").items()}


def load_history(run: str | os.PathLike) -> pd.DataFrame:
    path = Path(run) / "history.csv"
    if not path.is_file():
        raise FileNotFoundError(f"results file {str(path)!r} does not exist (has that run trained?)")
    return pd.read_csv(path)


def load_config(run: str | os.PathLike) -> dict[str, Any]:
    return _read_object(Path(run) / "config.json")


def run_state(run: str | os.PathLike) -> tuple[str, str]:
    """(state, detail) of the run folder ``run``: ``finished`` (config.json, history.csv of epochs 1..n,
    metrics.json and per_image.csv.gz that agree), ``missing`` (no run file), ``partial`` (config.json and 1..
    epochs-1 epochs, no metrics.json; detail "1 of 2 epochs") or ``failed`` (anything else; detail says why)."""
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
    if history is not None and list(history["epoch"]) != list(range(1, done + 1)):
        return "failed", f"history.csv's epochs are {list(history['epoch'])}, not 1..{done}"
    if metrics is None:
        if done == 0:
            return "failed", "it stopped before its first epoch ended"
        if epochs is None or done < epochs:
            return "partial", f"{done} of {epochs} epochs"
        return "failed", f"it trained {done} of {epochs} epochs but has no final evaluation (no metrics.json)"
    if not epochs == done == metrics.get("epochs"):
        return "failed", (f"its files disagree: config.json says {epochs} epochs, history.csv has {done}, "
                          f"metrics.json says {metrics.get('epochs')}")
    if not abs(history["accuracy"].iloc[-1] - metrics["accuracy"]) <= 1e-6:
        return "failed", (f"metrics.json's accuracy {metrics['accuracy']} is not history.csv's last "
                          f"({history['accuracy'].iloc[-1]})")
    if PER_IMAGE not in present:
        return "failed", f"metrics.json is there but {PER_IMAGE} is missing"
    rows = len(pd.read_csv(run / PER_IMAGE))
    if not rows == metrics.get("n_val") == config.get("n_val"):
        return "failed", (f"its files disagree on the validation images: {PER_IMAGE} has {rows}, metrics.json "
                          f"says {metrics.get('n_val')}, config.json {config.get('n_val')}")
    return "finished", f"{done} of {epochs} epochs"


def state_phrase(state: str, detail: str) -> str:
    """How a table says a run's state: "missing", "partial (1 of 2 epochs)", "failed (...)"."""
    return state if state in ("finished", "missing") else f"{state} ({detail})"


def load_run(run: Path) -> dict[str, Any]:
    """A finished run's files: {run_dir, seed, config, history, metrics, timings, per_image, before_training}."""
    run = Path(run)
    config = load_config(run)
    return {"run_dir": run, "seed": config.get("seed"), "config": config, "history": load_history(run),
            "metrics": load_metrics(run), "per_image": pd.read_csv(run / PER_IMAGE),
            "timings": pd.read_csv(run / "timings.csv") if (run / "timings.csv").is_file() else None,
            "before_training": read_json(run / BEFORE_TRAINING) if (run / BEFORE_TRAINING).is_file() else None}


def load_edition(results_dir: str | os.PathLike, profile: str, encoders: Iterable[str],
                 seeds: Iterable[int] | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """(runs, absent) of one edition. runs: {encoder: {encoder, dir, runs (``load_run``'s, per finished seed),
    config (the first run's), benchmark (DataFrame), benchmark_provenance, step_check, flops}} of the encoders
    with a finished run; absent: {encoder: "seed 1: partial (1 of 2 epochs); ..."}. ``seeds``: None = on disk."""
    runs, absent = {}, {}
    for encoder in encoders:
        folder = Path(results_dir) / profile / encoder_folder(encoder)
        expected = list(seeds) if seeds is not None else seeds_on_disk(folder)
        finished, unfinished = [], []
        for seed in expected or [0]:
            state, detail = run_state(folder / f"seed-{seed}")
            if state == "finished":
                finished.append(load_run(folder / f"seed-{seed}"))
            else:
                unfinished.append(f"seed {seed}: {state_phrase(state, detail)}")
        if unfinished:
            absent[encoder] = "; ".join(unfinished)
        if not finished:
            continue
        blob = read_benchmark(folder / "benchmark.json") if (folder / "benchmark.json").is_file() else {}
        runs[encoder] = {"encoder": encoder, "dir": folder, "runs": finished, "config": finished[0]["config"],
                         "benchmark": blob.get("frame"), "benchmark_provenance": blob.get("provenance"),
                         **{name: read_json(folder / f"{name}.json") if (folder / f"{name}.json").is_file() else None
                            for name in ("step_check", "flops")}}
    return runs, absent


def edition_files(folder: Path, encoders: Iterable[str]) -> list[Path]:
    """The small files of an edition's encoders and runs (what notebooks read and editions commit)."""
    files = []
    for encoder in encoders:
        enc = Path(folder) / encoder_folder(encoder)
        files += [enc / name for name in ENCODER_FILES]
        files += [enc / f"seed-{seed}" / name for seed in seeds_on_disk(enc) for name in RUN_FILES]
    return files


WAYS_ON = ("To train this run from scratch in that folder, pass resume=False (train_run(..., resume=False), "
           "the 02_train notebook's `-p resume False`, the train CLI's --no-resume, the study's --force); "
           "to keep the run that is there, use another results_dir.")


class RunMismatchError(ValueError):
    """The run folder holds another run (other parameters or tower architecture, or files that disagree);
    nothing was changed. ``run_dir``, ``holds`` ("a finished 6-epoch run"), ``changed`` ({name: (saved, now)})."""

    def __init__(self, run_dir: Path, holds: str, reason: str, changed: dict[str, Any] | None = None):
        self.run_dir, self.holds, self.changed = Path(run_dir), holds, dict(changed or {})
        extend = (" A run is never extended to more epochs (nor cut to fewer): its cosine schedule would not be "
                  "that of a run trained for the new number from the start." if "epochs" in self.changed else "")
        super().__init__(f"run folder {self.run_dir} holds {holds}, {reason}; it is not reused, extended or "
                         f"relabelled.{extend} {WAYS_ON}")


def refuse_other_run(run: Path, holds: str, config: StudyConfig, saved_config: dict[str, Any],
                     saved_tower: Any, tower: Any) -> None:
    """RunMismatchError when ``run`` holds a run of other parameters than ``config`` or another tower."""
    changed = changed_parameters(saved_config, config)
    if changed:
        listed = ", ".join(f"{name} {saved!r} (saved) vs {now!r} (now)" for name, (saved, now) in changed.items())
        raise RunMismatchError(run, holds, f"made with other parameters: {listed}", changed)
    if saved_tower != tower:
        raise RunMismatchError(run, holds, f"made for another {config.encoder} tower ({saved_tower}) than the one "
                               f"built now ({tower})", {"architecture": (saved_tower, tower)})


def finished_run_history(config: StudyConfig, tower: Any) -> pd.DataFrame | None:
    """The history of the finished run of ``config`` (and tower ``tower``) in its folder; None when there is no
    finished run; RunMismatchError when it holds another one or files that disagree. Reads only."""
    run = run_dir(config)
    if not (run / "metrics.json").is_file():
        return None
    state, detail = run_state(run)
    if state != "finished":
        raise RunMismatchError(run, "a finished run", f"whose files disagree ({detail})")
    saved = load_config(run)
    holds = f"a finished {saved.get('epochs')}-epoch run"
    refuse_other_run(run, holds, config, saved, saved.get("architecture"), tower)
    return load_history(run)
