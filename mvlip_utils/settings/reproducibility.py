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


def prepare_environment(enabled: bool) -> str | None:
    """Set ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` when ``enabled`` (a deterministic value already there is kept);
    returns the previous value (None: it was unset). Call it before the process's first cuBLAS call."""
    previous = os.environ.get(CUBLAS_ENV)
    if enabled and previous not in CUBLAS_DETERMINISTIC:
        os.environ[CUBLAS_ENV] = CUBLAS_DETERMINISTIC[0]
    return previous


def current_settings() -> dict[str, Any]:
    """The settings ``deterministic_mode`` changes, as they are now."""
    import torch._inductor.config as inductor

    return {"use_deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
            "cudnn.deterministic": torch.backends.cudnn.deterministic,
            "cudnn.benchmark": torch.backends.cudnn.benchmark,
            CUBLAS_ENV: os.environ.get(CUBLAS_ENV),
            **{f"inductor.{name}": getattr(inductor, name) for name in INDUCTOR_SETTINGS if hasattr(inductor, name)}}


def deterministic_settings() -> dict[str, Any]:
    """What deterministic mode sets (the inductor settings this PyTorch has)."""
    now = current_settings()
    cublas = now[CUBLAS_ENV] if now[CUBLAS_ENV] in CUBLAS_DETERMINISTIC else CUBLAS_DETERMINISTIC[0]
    return {"use_deterministic_algorithms": True, "warn_only": False, "cudnn.deterministic": True,
            "cudnn.benchmark": False, CUBLAS_ENV: cublas,
            **{f"inductor.{name}": value for name, value in INDUCTOR_SETTINGS.items() if f"inductor.{name}" in now}}


def apply_settings(settings: dict[str, Any]) -> None:
    """Set ``settings`` (every name of ``current_settings``, or none; an environment value None unsets it),
    inductor's last (``torch.use_deterministic_algorithms`` sets inductor's ``deterministic`` too)."""
    import torch._inductor.config as inductor

    if not settings:
        return
    torch.use_deterministic_algorithms(settings["use_deterministic_algorithms"], warn_only=settings["warn_only"])
    torch.backends.cudnn.deterministic = settings["cudnn.deterministic"]
    torch.backends.cudnn.benchmark = settings["cudnn.benchmark"]
    if settings[CUBLAS_ENV] is None:
        os.environ.pop(CUBLAS_ENV, None)
    else:
        os.environ[CUBLAS_ENV] = settings[CUBLAS_ENV]
    for key, value in settings.items():
        if key.startswith("inductor."):  # only the names this PyTorch's inductor has
            setattr(inductor, key[len("inductor."):], value)


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
    """Deterministic mode inside the block when ``enabled``, the settings restored on leaving; yields them as they
    were ({} when not ``enabled``).
    An operation without a deterministic implementation raises ``NondeterministicOperationError``."""
    before = current_settings() if enabled else {}
    if enabled:
        apply_settings(deterministic_settings())
    try:
        yield before
    except RuntimeError as exc:
        operation = nondeterministic_operation(exc) if enabled else None
        if operation is None or isinstance(exc, NondeterministicOperationError):
            raise
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        detail = re.split(r", but you set|(?<=\.) ", first)[0]  # PyTorch's first clause names the operation
        raise NondeterministicOperationError(operation, detail[:300]) from exc
    finally:
        apply_settings(before)
