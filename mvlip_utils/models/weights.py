"""Reading weight files and checkpoints without running code from them.

Torch files (``.pth``, ``.pth.tar``, ``.bin``, ``.pt``) are pickles, which can run code: they are loaded by
``load_torch_file`` with ``weights_only=True`` plus a few types allowed by name (``WEIGHTS_GLOBALS``); a file that
needs more raises ``UnsafeWeightsError`` naming the types, unless the user opts in with
``trust_pickled_weights=True`` or ``MVLIP_TRUST_PICKLED_WEIGHTS=1`` (then loaded in full, with a warning).
``.safetensors`` files hold tensors only and are always safe.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any, Sequence

import torch

logger = logging.getLogger("mvlip_utils.weights")

TRUST_ENV = "MVLIP_TRUST_PICKLED_WEIGHTS"

# Types weight files may hold besides tensors and plain containers: MambaVision's .pth.tar stores timm's
# train.py arguments as an argparse.Namespace.
WEIGHTS_GLOBALS: tuple[type, ...] = (argparse.Namespace,)

WEIGHTS_REMEDY = (
    "To go on: use the .safetensors file where the hub offers one; or, only if you trust this file, convert it "
    "once (load it in full, then safetensors.torch.save_file(state_dict, 'model.safetensors')) and point the "
    f"study at the .safetensors file, or set trust_pickled_weights=True (or {TRUST_ENV}=1) to load it in full.")


class UnsafeWeightsError(ValueError):
    """A pickled file needs a type that loading without running code does not allow."""


def load_torch_file(path: str | os.PathLike, allowed: Sequence[type] = (), trust: bool | None = False,
                    what: str = "file", remedy: str = WEIGHTS_REMEDY) -> Any:
    """The contents of the torch file ``path`` as the module docstring says; ``UnsafeWeightsError`` names ``what``,
    the file, the types it needs and ``remedy``."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust and os.environ.get(TRUST_ENV, "").strip().lower() not in ("1", "true", "yes", "on"):
            besides = "".join(f", {_name(t)}" for t in allowed)
            raise UnsafeWeightsError(
                f"{what} {str(path)!r} was not loaded: besides tensors{besides} and plain Python values it needs "
                f"{_needed_types(path, exc, allowed)}, and unpickling such types can run code.\n{remedy}") from None
    logger.warning("loading %s in full (trust_pickled_weights / %s): it can run code", path, TRUST_ENV)
    return torch.load(path, map_location="cpu", weights_only=False)  # the opt-in: the package's only full unpickling


def _needed_types(path: Path, exc: pickle.UnpicklingError, allowed: Sequence[type]) -> str:
    """The types the file names beyond torch's defaults and ``allowed``, as a readable list."""
    allowed_names = {_name(t) for t in allowed}
    try:
        names = [n for n in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
                 if n not in allowed_names]
    except Exception:  # not a zip-format checkpoint (or an older torch): torch's message names the first one
        names = []
    if not names:
        match = re.search(r"GLOBAL (\S+) was not an allowed global", str(exc))
        names = [match.group(1)] if match else []
    if not names:  # not a type: an operation torch's weights-only unpickler does not perform (or not a pickle)
        detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", str(exc))
        return f"something torch's weights-only loader refuses ({detail.group(1) if detail else exc})"
    return ", ".join(names)


def _name(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def read_state_dict(path: str | os.PathLike, trust: bool | None = False) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: .pth/.pth.tar/.bin (torch, via ``load_torch_file``) or .safetensors.
    Unwraps {'state_dict': ...}, {'model': ...} and {'module': ...} and strips a 'module.' prefix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = load_torch_file(path, allowed=WEIGHTS_GLOBALS, trust=trust, what="weights file")
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state:
        raise ValueError(f"checkpoint file {str(path)!r} holds no state dict")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state
