"""Image towers by name, built through timm's registry, each with a new 512-d projection (paper step 3).

``mambavision``  MambaVision-B-21K  (``mamba_vision_B_21k``, registered into timm by ``import mambavision``)
``swin``         Swin-B             (``swin_base_patch4_window7_224.ms_in22k_ft_in1k``)
``vit``          CLIP ViT-B/32's own image tower (``vit_base_patch32_clip_224.openai``)

Two sizes: ``paper`` (exactly these architectures) and ``smoke`` (the same families at tiny widths and
depths). Any other timm image model name is built by ``timm_towers`` at its own size (issue 19). Pretrained weights come from a local file when ``weights_path`` is given, else from the usual
caches/hubs; when they cannot be had the error names the weight, where it looked and how to go on.
There is never a silent fall-back to random weights. Weight files are read without running code from them
(``weights.read_state_dict``; ``trust_pickled_weights`` is the opt-in for a pickled file the user trusts).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import timm

from ..settings.encoders import DerivedNames
from .image_tower import (EMBED_DIM, SSM_BACKEND, ImageTower, WeightsUnavailableError, count_parameters,  # noqa: F401
                          feature_dim)
from .timm_towers import architecture as timm_architecture, create_timm_tower
from .weights import read_state_dict


TIMM_NAMES = DerivedNames({  # an extra encoder is its own timm name (``timm_towers``)
    "mambavision": "mamba_vision_B_21k",
    "swin": "swin_base_patch4_window7_224.ms_in22k_ft_in1k",
    "vit": "vit_base_patch32_clip_224.openai",
}, lambda encoder: encoder)

# Environment variables a user can point at local checkpoint files (README: "Reproduce the paper").
WEIGHTS_ENV = {
    "mambavision": "MVLIP_MAMBAVISION_WEIGHTS",
    "swin": "MVLIP_SWIN_WEIGHTS",
    "vit": "MVLIP_VIT_WEIGHTS",
}

# Tiny members of each family for the offline smoke profile (64 px inputs).
SMOKE_OVERRIDES: dict[str, dict[str, Any]] = {
    "mambavision": dict(dim=32, in_dim=16, depths=[1, 1, 2, 2], num_heads=[1, 2, 4, 8],
                        window_size=[8, 8, 4, 2], drop_path_rate=0.0),
    # three stages (16, 8, 4 px feature maps at 64 px input), windows of 8: a four-stage Swin this small
    # learned too slowly on the smoke data to clear 3x chance in six epochs (0.19-0.33 measured)
    "swin": dict(embed_dim=32, depths=(1, 1, 1), num_heads=(2, 4, 8), window_size=8, drop_path_rate=0.0),
    "vit": dict(embed_dim=64, depth=2, num_heads=2, patch_size=8),
}


def _unavailable(encoder: str, what: str, looked: list[str], cause: BaseException | None) -> WeightsUnavailableError:
    env = WEIGHTS_ENV[encoder]
    where = "\n  ".join(looked) if looked else "(nowhere)"
    msg = (f"pretrained weights for encoder={encoder!r} ({what}) are not available.\n"
           f"Looked in:\n  {where}\n"
           f"To go on: download the checkpoint on a machine with internet and pass its path as "
           f"image_weights=... (or set {env}=/path/to/file), or run with pretrained=False "
           f"(random weights; results are then not the paper's).")
    if cause is not None:
        msg += f"\nCause: {type(cause).__name__}: {cause}"
    return WeightsUnavailableError(msg)


def _load_mambavision_weights(backbone: nn.Module, path: str, trust: bool = False) -> None:
    state = read_state_dict(path, trust=trust)
    state = {k: v for k, v in state.items() if not k.startswith("head.")}  # the classifier is replaced
    result = backbone.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"checkpoint {path!r} does not fit {TIMM_NAMES['mambavision']}: "
                         f"missing {result.missing_keys[:5]}..., unexpected {result.unexpected_keys[:5]}...")


def _mambavision_pretrained(backbone: nn.Module, weights_path: str | None, trust: bool = False) -> None:
    looked = [f"environment variable {WEIGHTS_ENV['mambavision']} (unset)"]
    if weights_path:
        if not Path(weights_path).is_file():
            raise FileNotFoundError(f"parameter image_weights={weights_path!r}: no such file")
        _load_mambavision_weights(backbone, weights_path, trust)
        return
    target = str(Path(torch.hub.get_dir()) / "checkpoints" / "mamba_vision_B_21k.pth.tar")
    for candidate in (target, "/tmp/mamba_vision_B_21k.pth.tar"):  # ours, then mambavision's own place
        looked.append(candidate)
        if Path(candidate).is_file():
            _load_mambavision_weights(backbone, candidate, trust)
            return
    url = backbone.default_cfg.get("url")
    looked.append(f"{url} (download to {target})")
    try:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, target, progress=True)
    except Exception as exc:  # offline: no route to the hub
        Path(target).unlink(missing_ok=True)
        raise _unavailable("mambavision", TIMM_NAMES["mambavision"], looked, exc) from exc
    _load_mambavision_weights(backbone, target, trust)


def architecture(encoder: str, size: str = "paper", image_size: int = 224) -> dict[str, Any]:
    """What defines the tower's architecture (timm name and the overrides of its size): a finished run is
    only reused when this is unchanged."""
    if encoder not in TIMM_NAMES:  # any other timm model, at its own size
        return timm_architecture(encoder, image_size)
    overrides = dict(SMOKE_OVERRIDES[encoder]) if size == "smoke" else {}
    return {"timm_name": TIMM_NAMES[encoder], "size": size, "image_size": image_size,
            "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}}


def _file_overlay(weights_path: str, trust_pickled_weights: bool) -> dict[str, Any]:
    """timm's ``pretrained_cfg_overlay`` for a local weights file: its tensors, read by ``read_state_dict``
    (weights only, whatever the installed timm's own file loading does), and the path for the record.
    timm then filters them (key conversions, classifier dropped) as it does for its own files."""
    return dict(state_dict=read_state_dict(weights_path, trust=trust_pickled_weights), file=str(weights_path))


def _forget_overlay_tensors(backbone: nn.Module) -> None:
    # timm keeps the overlay in the model's pretrained_cfg (default_cfg is the same dict): drop the tensors' copy
    for cfg in (getattr(backbone, "pretrained_cfg", None), getattr(backbone, "default_cfg", None)):
        if isinstance(cfg, dict):
            cfg.pop("state_dict", None)


def create_image_tower(encoder: str, size: str = "paper", pretrained: bool = False,
                       weights_path: str | None = None, image_size: int = 224,
                       embed_dim: int = EMBED_DIM, trust_pickled_weights: bool = False) -> ImageTower:
    """The image tower ``encoder`` at ``size``, with a new ``embed_dim`` projection.

    A torch weights file is loaded without running code from it (``weights.read_state_dict``); one that
    needs more is refused unless ``trust_pickled_weights`` (or MVLIP_TRUST_PICKLED_WEIGHTS=1)."""
    if encoder not in TIMM_NAMES:  # any other timm image model, at its own size (``timm_towers``)
        return create_timm_tower(encoder, pretrained=pretrained, weights_path=weights_path, image_size=image_size,
                                 embed_dim=embed_dim, trust_pickled_weights=trust_pickled_weights)
    if size not in ("paper", "smoke"):
        raise ValueError(f"parameter size={size!r} is not one of ['paper', 'smoke']")
    if pretrained and size != "paper":
        raise ValueError("pretrained=True needs size='paper' (there are no pretrained smoke-size towers)")
    name = TIMM_NAMES[encoder]
    kwargs: dict[str, Any] = dict(SMOKE_OVERRIDES[encoder]) if size == "smoke" else {}
    if encoder in ("swin", "vit") and (size == "smoke" or image_size != 224):
        kwargs["img_size"] = image_size
    if encoder == "vit" and pretrained:
        # OpenAI trained CLIP ViT-B/32 with QuickGELU; timm's `.openai` tag defaults to GELU (its cfg notes say
        # "use quickgelu model variant for original results"), which changes every feature of the loaded tower
        kwargs["act_layer"] = "quick_gelu"
    if pretrained and not weights_path:
        weights_path = os.environ.get(WEIGHTS_ENV[encoder]) or None
    if encoder == "mambavision":
        backbone = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        if pretrained:
            _mambavision_pretrained(backbone, weights_path, trust_pickled_weights)
    else:
        if pretrained and weights_path and not Path(weights_path).is_file():
            raise FileNotFoundError(f"parameter image_weights={weights_path!r}: no such file")
        overlay = _file_overlay(weights_path, trust_pickled_weights) if (pretrained and weights_path) else None
        try:
            backbone = timm.create_model(name, pretrained=pretrained, num_classes=0,
                                         pretrained_cfg_overlay=overlay, **kwargs)
            _forget_overlay_tensors(backbone)
        except Exception as exc:
            if not pretrained or weights_path:
                raise
            hub = timm.models.get_pretrained_cfg(name)
            looked = [f"environment variable {WEIGHTS_ENV[encoder]} (unset)",
                      f"the Hugging Face hub cache and hub, id {getattr(hub, 'hf_hub_id', None)!r}"]
            raise _unavailable(encoder, name, looked, exc) from exc
    return ImageTower(backbone, encoder, name, embed_dim)


# ------------------------------------------------------------------------- what the selective scan costs
def scan_skip_only(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """A stand-in for MambaVision's selective scan that keeps only its skip term ``u * D``: the same model
    without the recurrence, an upper bound on what any scan implementation could reach."""
    return (u * D[:, None]).to(u.dtype)


@contextlib.contextmanager
def selective_scan_replaced(fn: Callable = scan_skip_only):
    """Inside the block, MambaVision's mixers call ``fn`` instead of the selective scan (mambavision binds
    ``selective_scan_fn`` at import, so the module attribute is swapped and restored on exit)."""
    from mambavision.models import mamba_vision as mv

    saved = mv.selective_scan_fn
    mv.selective_scan_fn = fn
    try:
        yield
    finally:
        mv.selective_scan_fn = saved
