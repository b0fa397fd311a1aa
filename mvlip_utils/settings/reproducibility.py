"""Runs that repeat exactly: what the ``deterministic`` parameter sets.

``deterministic_mode(True)``: ``torch.use_deterministic_algorithms(True)``, ``CUBLAS_WORKSPACE_CONFIG=:4096:8``
(set by ``prepare_environment`` before the first cuBLAS call), cuDNN deterministic without benchmarking, and
inductor's deterministic mode without autotuning; two runs of one seed on the same hardware and software are then
bit-identical. ``deterministic_mode(False)`` changes nothing (PyTorch's defaults, the paper's)."""

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
    """deterministic=True, but PyTorch has no deterministic implementation of ``operation`` on this device."""

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
    """Set each of ``settings`` (names as ``current_settings``; an environment value None unsets it), inductor's
    last (``torch.use_deterministic_algorithms`` sets inductor's ``deterministic`` too)."""
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
    """Enter deterministic mode when ``enabled``; returns {setting: previous value} of what changed."""
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
    """The operation named by PyTorch's no-deterministic-implementation error in ``exc`` or its causes, or None."""
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
    """Deterministic mode inside the block when ``enabled``, restored on leaving; yields {setting: previous value}.
    An operation without a deterministic implementation raises ``NondeterministicOperationError``."""
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
