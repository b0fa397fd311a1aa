"""Runs that repeat exactly: what the ``deterministic`` parameter sets, in one place.

``deterministic_mode(True)`` is the region in which a run trains (``train.train_run``) when its configuration
says ``deterministic=True``. On the same hardware and software, two runs with the same seed then give
bit-identical histories and metrics, and a run killed and resumed from its checkpoint gives those of the
uninterrupted run. It sets:

- ``torch.use_deterministic_algorithms(True)`` (``warn_only=False``): operations use their deterministic
  algorithms where PyTorch has them (cuDNN convolutions, index_put / index_add with accumulation,
  scatter_add, the flash and memory-efficient attention backward with one key split, ...) and raise where it
  has none;
- ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in ``os.environ`` (kept if it already holds ``:16:8``, the other
  configuration cuBLAS documents as deterministic). PyTorch sizes its cuBLAS workspaces once per process, at
  its first cuBLAS call, so the variable must be set before the first matmul on the GPU:
  ``prepare_environment`` is called as soon as a run's configuration is known (``params.config_from_parameters``
  in the notebooks, the train command line before anything touches CUDA), and again on entering the mode;
- cuDNN: ``torch.backends.cudnn.deterministic = True``, ``torch.backends.cudnn.benchmark = False`` (no choice
  of algorithms by timing);
- torch.compile (``train_step`` compiled and graphed): inductor's ``deterministic`` mode (no on-device
  benchmarking that changes numerics: the eager matmul instead of autotuned templates, reduction configs
  chosen by heuristics, not by timing) and its autotuning off (``max_autotune``, ``coordinate_descent_tuning``),
  each only where this PyTorch has the setting. The compiled tower is compiled inside the mode (compilation is
  lazy: at the first step), so inductor sees the deterministic flags too.

The data order, the caption draws and the DataLoader's workers are seeded in every mode
(``data.make_loader``: a seeded generator and ``_seed_worker``; ``train._epoch_generator``); the checkpoint
carries the RNG states (``run_folder``). ``deterministic_mode(False)`` changes nothing: PyTorch's defaults,
the paper's numerics.

An operation with no deterministic implementation on the device raises ``NondeterministicOperationError``,
which names the operation and the way on (``deterministic=False``). For the three towers on CUDA none is
expected to raise (the GPU test tier, ``tests/test_gpu_tier.py``, trains all three in this mode): Swin's
relative position bias is an index whose backward is ``index_put_`` with accumulation (PyTorch's sorting
kernel, deterministic); the attention of all three is ``scaled_dot_product_attention`` (flash and
memory-efficient backward have deterministic variants; cuDNN attention is not chosen in this mode);
MambaVision's ``AdaptiveAvgPool2d(1)`` is computed as a mean (the adaptive-pool CUDA backward, which has no
deterministic implementation, is not used for a 1x1 output); its depthwise ``Conv1d`` runs on cuDNN's
deterministic algorithms and the selective scan on the project's Triton kernels, which use no atomics.
Operations that do raise on CUDA include the backward of bilinear/bicubic ``interpolate`` (e.g. ViT's position
embedding resampled to another resolution) and of ``AdaptiveAvgPool2d`` with outputs larger than 1x1: the
benchmark chapter's resolution sweep is therefore not run in this mode (it measures speed, not a run).
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any, Iterator

import torch

CUBLAS_ENV = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")  # the configurations cuBLAS documents as reproducible
# inductor's settings for torch.compile in deterministic mode (set where this PyTorch has them)
INDUCTOR_SETTINGS = {"deterministic": True, "max_autotune": False, "coordinate_descent_tuning": False}

WAY_ON = ("Run with deterministic=False (the notebooks' and the study's `-p deterministic=false`, the train "
          "command line's `--deterministic false`).")


class NondeterministicOperationError(RuntimeError, ValueError):
    """deterministic=True, but PyTorch has no deterministic implementation of an operation the run needs on
    this device. ``operation`` names it; the message says the way on (deterministic=False)."""

    def __init__(self, operation: str, detail: str):
        self.operation = operation
        super().__init__(f"deterministic=True: PyTorch has no deterministic implementation of {operation} on this "
                         f"device (it raised: {detail}). {WAY_ON}")


def _inductor_config():
    try:
        import torch._inductor.config as inductor_config
    except Exception:  # noqa: BLE001 - a PyTorch without inductor has nothing to set
        return None
    return inductor_config


def prepare_environment(enabled: bool) -> str | None:
    """Set ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when ``enabled`` (a deterministic value already there is kept);
    returns the previous value (None: it was unset). Call it before the process's first cuBLAS call."""
    previous = os.environ.get(CUBLAS_ENV)
    if enabled and previous not in CUBLAS_DETERMINISTIC:
        os.environ[CUBLAS_ENV] = CUBLAS_DETERMINISTIC[0]
    return previous


def current_settings() -> dict[str, Any]:
    """The settings ``deterministic_mode`` changes, as they are now."""
    out: dict[str, Any] = {
        "use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn.deterministic": torch.backends.cudnn.deterministic,
        "cudnn.benchmark": torch.backends.cudnn.benchmark,
        CUBLAS_ENV: os.environ.get(CUBLAS_ENV),
    }
    inductor = _inductor_config()
    for name in INDUCTOR_SETTINGS:
        if inductor is not None and hasattr(inductor, name):
            out[f"inductor.{name}"] = getattr(inductor, name)
    return out


def deterministic_settings() -> dict[str, Any]:
    """What deterministic mode sets (the inductor settings this PyTorch has)."""
    now = current_settings()
    target: dict[str, Any] = {"use_deterministic_algorithms": True, "warn_only": False, "cudnn.deterministic": True,
                              "cudnn.benchmark": False,
                              CUBLAS_ENV: now[CUBLAS_ENV] if now[CUBLAS_ENV] in CUBLAS_DETERMINISTIC
                              else CUBLAS_DETERMINISTIC[0]}
    target.update({f"inductor.{name}": value for name, value in INDUCTOR_SETTINGS.items() if f"inductor.{name}" in now})
    return target


def apply_settings(settings: dict[str, Any]) -> None:
    """Set each of ``settings`` (names as ``current_settings`` gives them; an environment value None unsets it).
    The inductor settings come last: ``torch.use_deterministic_algorithms`` sets inductor's ``deterministic``
    itself in recent PyTorch."""
    if "use_deterministic_algorithms" in settings or "warn_only" in settings:
        torch.use_deterministic_algorithms(
            bool(settings.get("use_deterministic_algorithms", torch.are_deterministic_algorithms_enabled())),
            warn_only=bool(settings.get("warn_only", torch.is_deterministic_algorithms_warn_only_enabled())))
    if "cudnn.deterministic" in settings:
        torch.backends.cudnn.deterministic = bool(settings["cudnn.deterministic"])
    if "cudnn.benchmark" in settings:
        torch.backends.cudnn.benchmark = bool(settings["cudnn.benchmark"])
    if CUBLAS_ENV in settings:
        if settings[CUBLAS_ENV] is None:
            os.environ.pop(CUBLAS_ENV, None)
        else:
            os.environ[CUBLAS_ENV] = str(settings[CUBLAS_ENV])
    inductor = _inductor_config()
    for key, value in settings.items():
        if key.startswith("inductor.") and inductor is not None and hasattr(inductor, key[len("inductor."):]):
            setattr(inductor, key[len("inductor."):], value)


def set_deterministic(enabled: bool) -> dict[str, Any]:
    """Enter deterministic mode when ``enabled`` (nothing changes otherwise); returns {setting: its previous
    value} for each setting it changed, which ``apply_settings`` restores."""
    if not enabled:
        return {}
    before = current_settings()
    target = deterministic_settings()
    # the deterministic-algorithms pair is set together, so both previous values are kept when either changes
    changed = {k: before[k] for k, v in target.items() if before.get(k) != v}
    if {"use_deterministic_algorithms", "warn_only"} & set(changed):
        changed.update({k: before[k] for k in ("use_deterministic_algorithms", "warn_only")})
    if any(k.startswith("inductor.") for k in target) and "use_deterministic_algorithms" in changed:
        changed.update({k: before[k] for k in target if k.startswith("inductor.")})
    apply_settings(target)
    return changed


_OPERATION_PATTERNS = (
    (re.compile(r"(\S+?) does not have a deterministic implementation"), None),
    (re.compile(r"uses CuBLAS"), "a cuBLAS call (CUBLAS_WORKSPACE_CONFIG was not set to :4096:8 or :16:8 before "
                                 "the process's first cuBLAS call)"),
    (re.compile(r"num_splits_key > 1"), "memory-efficient attention's backward with several key splits"),
)


def nondeterministic_operation(exc: BaseException) -> str | None:
    """The operation named by PyTorch's error for an operation without a deterministic implementation (in
    ``exc`` or the exceptions it was raised from), or None when ``exc`` is no such error."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        for pattern, name in _OPERATION_PATTERNS:
            match = pattern.search(text)
            if match:
                return name or match.group(1).strip("`'\"")
        exc = exc.__cause__ or exc.__context__
    return None


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[dict[str, Any]]:
    """Deterministic mode (see the module's docstring) inside the block when ``enabled``, the previous
    settings restored on leaving it; yields {setting: previous value} of what it changed. An operation
    without a deterministic implementation raises ``NondeterministicOperationError`` naming it."""
    changed = set_deterministic(enabled)
    try:
        yield changed
    except RuntimeError as exc:
        operation = nondeterministic_operation(exc) if enabled else None
        if operation is None or isinstance(exc, NondeterministicOperationError):
            raise
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        detail = re.split(r", but you set|(?<=\.) ", first)[0]  # PyTorch's first clause names the operation
        raise NondeterministicOperationError(operation, detail[:300]) from exc
    finally:
        apply_settings(changed)
