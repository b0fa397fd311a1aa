"""What a run folder holds, and the rules that keep it true: the checkpoint written after every epoch for an
exact resume (tensors and plain values only, read back with ``weights_only=True``), the files that describe
the run (config.json at its start; metrics.json and the per-class and per-image files at its end), and the
refusal (``RunMismatchError``) of a folder that holds another run: other parameters, ``epochs`` included,
or another tower architecture. A run is never reused, extended or relabelled silently.
"""

from __future__ import annotations

import io
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from . import results
from .results import CHECKPOINT
from .experiment import Experiment, sample_paths
from ..models.model import MVLIP
from ..settings.profiles import StudyConfig, changed_parameters
from ..models.towers import SSM_BACKEND, architecture, count_parameters
from ..models.weights import TRUST_ENV, load_torch_file



# How to go on when a run checkpoint needs more than tensors and plain values to load.


CHECKPOINT_REMEDY = (
    "To go on: start the run again (train_run(..., resume=False); the study's --force) or use another "
    "results_dir; or, if this is a checkpoint the study wrote for you (versions before weights-only loading "
    f"stored numpy's RNG state), resume it with trust_pickled_weights=True (or {TRUST_ENV}=1).")


WAYS_ON = ("To train this run from scratch in that folder, pass resume=False (train_run(..., resume=False), "
           "the 02_train notebook's `-p resume False`, the train CLI's --no-resume, the study's --force); "
           "to keep the run that is there, use another results_dir.")


class RunMismatchError(ValueError):
    """The run folder holds another run than the one asked for: a finished run or a checkpoint made with
    other parameters (``epochs`` included) or another tower architecture, or files that disagree. Nothing
    in the folder was changed. ``run_dir``, ``holds`` (e.g. "a finished 6-epoch run") and ``changed``
    ({name: (saved, now)}) say what was found; the message also names the ways on (``WAYS_ON``)."""

    def __init__(self, run_dir: Path, holds: str, reason: str, changed: dict[str, Any] | None = None):
        self.run_dir, self.holds, self.changed = Path(run_dir), holds, dict(changed or {})
        extend = (" A run is never extended to more epochs (nor cut to fewer): its cosine schedule would not be "
                  "that of a run trained for the new number from the start." if "epochs" in self.changed else "")
        super().__init__(f"run folder {self.run_dir} holds {holds}, {reason}; it is not reused, extended or "
                         f"relabelled.{extend} {WAYS_ON}")

    @classmethod
    def other_parameters(cls, run_dir: Path, holds: str, changed: dict[str, Any]) -> RunMismatchError:
        listed = ", ".join(f"{name} {saved!r} (saved) vs {now!r} (now)" for name, (saved, now) in changed.items())
        return cls(run_dir, holds, f"made with other parameters: {listed}", changed)

    @classmethod
    def other_tower(cls, run_dir: Path, holds: str, encoder: str, saved: Any, now: Any) -> RunMismatchError:
        return cls(run_dir, holds, f"made for another {encoder} tower ({saved}) than the one built now ({now})",
                   {"architecture": (saved, now)})


def _model_state(model: MVLIP, train_text: bool) -> dict[str, torch.Tensor]:
    # the frozen text tower is rebuilt from its weights (or the seed), so it stays out of the checkpoint
    return {k: v for k, v in model.state_dict().items() if train_text or not k.startswith("text.")}


def _numpy_rng_state() -> dict[str, Any]:
    """numpy's global RNG state as plain values and a tensor (np.random.get_state() holds an ndarray)."""
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state()
    return {"bit_generator": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def _set_numpy_rng_state(state: dict[str, Any] | tuple) -> None:
    """Restore ``_numpy_rng_state()``; a tuple is np.random.get_state() as checkpoints before it stored it."""
    if isinstance(state, dict):
        state = (state["bit_generator"], state["key"].numpy().astype(np.uint32), state["pos"],
                 state["has_gauss"], state["cached_gaussian"])
    np.random.set_state(state)


def _plain(value: Any) -> Any:
    """A numpy scalar as the Python number it holds (exactly); anything else unchanged."""
    return value.item() if isinstance(value, np.generic) else value


def checkpoint_state(experiment: Experiment, optimizer, scheduler, epoch: int, history: list[dict]) -> dict[str, Any]:
    """The run's state after ``epoch`` as a host copy (tensors copied off the device, so that training may go
    on changing its own): tensors and plain Python values only, so that it loads with ``weights_only=True``
    and no allowed types."""
    return _host_copy({
        "epoch": epoch,
        "model": _model_state(experiment.model, experiment.config.train_text),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": _numpy_rng_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "config": experiment.config.to_dict(),
        "architecture": _architecture(experiment.config),
        "history": [{k: _plain(v) for k, v in row.items()} for row in history],
    })


def _host_copy(value: Any) -> Any:
    """``value`` with every tensor replaced by a copy of it in host memory (lists, tuples, dicts walked)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _host_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_host_copy(v) for v in value)
    return value


def write_checkpoint(state: dict[str, Any], path: Path) -> Path:
    """Serialise a ``checkpoint_state`` to ``path`` atomically (a reader sees the old or the new file)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    results.atomic_write_bytes(path, buffer.getvalue())
    return path


class CheckpointWriter:
    """Writes a run's checkpoints off the training path. ``save`` waits for the previous write, takes the host
    copy of the state (``checkpoint_state``: all that training waits for) and hands serialising and writing
    it (about 1 GB for a paper-size tower) to a background thread, while training goes on. ``wait`` blocks
    until the last write is on disk and raises its error, if it had one; ``write_seconds`` is the last write's
    duration. The write is atomic, so an interruption at any moment leaves the previous checkpoint or the new
    one, never half of one; the thread is not a daemon, so a run that ends (or fails) finishes its write."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.write_seconds: float | None = None

    def save(self, experiment: Experiment, optimizer, scheduler, epoch: int, history: list[dict]) -> float | None:
        """Start writing the state after ``epoch``; returns the seconds of the previous write (None if none)."""
        previous = self.wait()
        self.write_seconds = None
        state = checkpoint_state(experiment, optimizer, scheduler, epoch, history)
        path = experiment.run_dir / CHECKPOINT

        def write() -> None:
            started = time.perf_counter()
            try:
                write_checkpoint(state, path)
            except BaseException as exc:  # noqa: BLE001 - raised in the training thread by wait()
                self._error = exc
            self.write_seconds = time.perf_counter() - started

        self._thread = threading.Thread(target=write, name=f"checkpoint-epoch-{epoch}")
        self._thread.start()
        return previous

    def wait(self) -> float | None:
        """Block until the last write is done; its error, if any, is raised here. Returns its seconds."""
        self.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        return self.write_seconds

    def join(self) -> None:
        """Block until the last write is done, raising nothing (for the way out of a failed run)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def load_checkpoint(experiment: Experiment, optimizer, scheduler) -> tuple[int, list[dict]]:
    """Restore a run from its checkpoint (read with weights_only=True: a checkpoint that needs more is refused
    unless trust_pickled_weights); returns (last complete epoch, history). (0, []) when none.

    A checkpoint of other parameters (``epochs`` too) or of another tower architecture raises
    RunMismatchError."""
    path = experiment.run_dir / CHECKPOINT
    if not path.is_file():
        return 0, []
    state = load_torch_file(path, trust=experiment.config.trust_pickled_weights, what="run checkpoint",
                            remedy=CHECKPOINT_REMEDY)
    holds = f"a checkpoint after epoch {state['epoch']} of a {state['config'].get('epochs')}-epoch run"
    # (a checkpoint written before the architecture was saved is checked by its parameters alone)
    _refuse_other_run(experiment.run_dir, holds, experiment.config, state["config"], state.get("architecture"),
                      tower_may_be_unsaved=True)
    try:
        missing, unexpected = experiment.model.load_state_dict(state["model"], strict=False)
    except RuntimeError as exc:  # shapes differ: a checkpoint of another architecture
        raise ValueError(f"checkpoint {path} does not fit the model built now ({exc}); use another "
                         f"results_dir, or start again (the study's --force)") from exc
    if unexpected or any(not k.startswith("text.") for k in missing):
        raise ValueError(f"checkpoint {path} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    _set_numpy_rng_state(rng["numpy"])
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["epoch"]), list(state["history"])


def _architecture(config: StudyConfig) -> dict[str, Any]:
    return architecture(config.encoder, config.model_size, config.image_size)


def write_run_config(experiment: Experiment) -> None:
    model = experiment.model
    results.write_json(experiment.run_dir / "config.json", {
        **experiment.config.to_dict(),
        "resolved_device": experiment.device,
        "device_name": results.device_description(experiment.device),
        "versions": results.versions(),
        "ssm_backend": SSM_BACKEND,
        "data_root": str(experiment.data_root),
        "n_train": len(experiment.train_set),
        "n_val": len(experiment.val_set),
        "n_classes": len(experiment.classnames),
        "classnames": experiment.classnames,
        "parameters": {"image_tower": count_parameters(model.visual), "text_tower": count_parameters(model.text)},
        "timm_name": model.visual.timm_name,
        "architecture": _architecture(experiment.config),
    })


def write_final_results(experiment: Experiment, evaluation: dict[str, Any], epochs: int) -> dict[str, Any]:
    run = experiment.run_dir
    metrics = {key: evaluation[key] for key in results.METRIC_KEYS if key in evaluation}
    # eval_images_per_s times the last validation pass, which also computes the validation loss (train.validate);
    # Table 2's evaluation-loop throughput is benchmark.json's eval_loop measurement, not this
    metrics.update(epochs=epochs, zeroshot_loss=evaluation["zeroshot_loss"],
                   eval_images_per_s=evaluation["images_per_s"])
    pd.DataFrame(evaluation["per_class"]).to_csv(run / "per_class.csv", index=False)
    pd.DataFrame(evaluation["confusion"], index=experiment.classnames,
                 columns=experiment.classnames).to_csv(run / "confusion.csv")
    pd.DataFrame({"label": evaluation["labels"], "prediction": evaluation["predictions"],
                  "path": sample_paths(experiment.val_set)}
                 ).to_csv(run / "predictions.csv", index=False)
    results.write_json(run / "metrics.json", metrics)
    return metrics


def finished_run_history(config: StudyConfig) -> pd.DataFrame | None:
    """The history of the finished run in the run folder of ``config`` when it is that run: the same
    parameters (``epochs`` included; profiles.RUN_IRRELEVANT aside), the same tower architecture and files
    that agree (results.check_run_consistency). None when the folder holds no finished run (no
    metrics.json); RunMismatchError when it holds another one. Reads only."""
    run = results.run_dir(config)
    if not results.is_finished(run):
        return None
    holds = _finished_description(run)
    problems = results.check_run_consistency(run)
    if problems:
        raise RunMismatchError(run, holds, "whose files disagree: " + "; ".join(problems))
    saved = results.load_config(run)
    _refuse_other_run(run, holds, config, saved, saved.get("architecture"))
    return results.load_history(run)


def _refuse_other_run(run: Path, holds: str, config: StudyConfig, saved_config: dict[str, Any],
                      saved_tower: dict[str, Any] | None, tower_may_be_unsaved: bool = False) -> None:
    """RunMismatchError when what ``run`` holds (``holds``: its description) was made with other parameters
    than ``config`` (profiles.changed_parameters) or with another tower architecture; ``tower_may_be_unsaved``
    lets a missing (None) saved architecture pass."""
    changed = changed_parameters(saved_config, config)
    if changed:
        raise RunMismatchError.other_parameters(run, holds, changed)
    tower = _architecture(config)
    if saved_tower != tower and not (tower_may_be_unsaved and saved_tower is None):
        raise RunMismatchError.other_tower(run, holds, config.encoder, saved_tower, tower)


def _finished_description(run: Path) -> str:
    try:
        epochs = results.load_metrics(run).get("epochs")
    except (OSError, ValueError):
        epochs = None
    return f"a finished {epochs}-epoch run" if epochs else "a finished run"


def reusable_run(config: StudyConfig) -> bool:
    """True when the run folder of ``config`` holds its finished run (the same parameters, ``epochs``
    included, profiles.RUN_IRRELEVANT aside; the same tower architecture; files that agree): the train
    notebook then loads it instead of training. False when the folder holds no finished run. A finished
    run of other parameters raises RunMismatchError (naming the folder, the run, the parameters and the
    ways on), as train_run would: it is never retrained, extended or relabelled silently."""
    return finished_run_history(config) is not None
