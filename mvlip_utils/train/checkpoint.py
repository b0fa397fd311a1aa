"""The checkpoint written after every epoch for an exact resume (model, optimiser, schedule, RNG states, config,
history; ``weights_only`` loadable), written atomically in the background."""

from __future__ import annotations

import io
import random
import threading
from typing import Any

import numpy as np
import torch

from ..data.files import atomic_write_bytes
from ..models.towers import architecture
from ..models.weights import load_torch_file
from .experiment import Experiment
from .run_folder import CHECKPOINT, refuse_other_run


def _host_copy(value: Any) -> Any:
    """``value`` with every tensor (in lists, tuples, dicts too) copied to host memory."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: _host_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_host_copy(v) for v in value)
    return value


def checkpoint_state(experiment: Experiment, optimizer, scheduler, epoch: int, history: list[dict]) -> dict[str, Any]:
    """The run's state after ``epoch``, copied to host memory; the model's without a frozen text tower (rebuilt
    from its weights)."""
    config = experiment.config
    name, key, pos, has_gauss, cached_gaussian = np.random.get_state()  # as plain values and a tensor
    numpy = {"bit_generator": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
             "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}
    return _host_copy({
        "epoch": epoch,
        "model": {k: v for k, v in experiment.model.state_dict().items()
                  if config.train_text or not k.startswith("text.")},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "numpy": numpy, "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        "config": config.to_dict(),
        "architecture": architecture(config.encoder, config.model_size, config.image_size),
        "history": [{k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()} for row in history],
    })


def write_checkpoint(state: dict[str, Any], path) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


class CheckpointWriter:
    """Writes a run's checkpoints, one at a time, in a (non-daemon) background thread."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def save(self, experiment: Experiment, optimizer, scheduler, epoch: int, history: list[dict]) -> None:
        """Start writing the state after ``epoch`` once the previous write is done (``wait``)."""
        self.wait()
        state = checkpoint_state(experiment, optimizer, scheduler, epoch, history)
        path = experiment.run_dir / CHECKPOINT

        def write() -> None:
            try:
                write_checkpoint(state, path)
            except BaseException as exc:  # noqa: BLE001 - raised in the training thread by wait()
                self._error = exc

        self._thread = threading.Thread(target=write, name=f"checkpoint-epoch-{epoch}")
        self._thread.start()

    def wait(self) -> None:
        """Block until the last write is done; its error, if any, is raised here."""
        self.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def read_checkpoint(experiment: Experiment) -> dict[str, Any] | None:
    """The run's checkpoint as saved, None without one; changes nothing. RunMismatchError for a checkpoint of
    other parameters (``epochs`` too) or tower."""
    config = experiment.config
    path = experiment.run_dir / CHECKPOINT
    if not path.is_file():
        return None
    state = load_torch_file(path, trust=config.trust_pickled_weights, what="run checkpoint",
                            remedy="To go on: start the run again (train_run(..., resume=False); the study's --force) "
                                   "or use another results_dir.")
    holds = f"a checkpoint after epoch {state['epoch']} of a {state['config'].get('epochs')}-epoch run"
    refuse_other_run(experiment.run_dir, holds, config, state["config"], state.get("architecture"),
                     architecture(config.encoder, config.model_size, config.image_size))
    return state


def load_checkpoint(experiment: Experiment, optimizer, scheduler, state: dict[str, Any] | None
                    ) -> tuple[int, list[dict]]:
    """Restore a run from its checkpoint ``state`` (``read_checkpoint``'s): (last complete epoch, history),
    (0, []) without one. ValueError if it does not fit the model."""
    if state is None:
        return 0, []
    path = experiment.run_dir / CHECKPOINT
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
    numpy = rng["numpy"]
    np.random.set_state((numpy["bit_generator"], numpy["key"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    random.setstate(rng["python"])
    if rng.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return int(state["epoch"]), list(state["history"])
