"""Image towers by name, built through timm's registry, each with a new 512-d projection (paper step 3).

``mambavision``  MambaVision-B-21K (``mamba_vision_B_21k``); ``swin``  Swin-B; ``vit``  CLIP ViT-B/32's own image
tower with CLIP's visual projection (timm's ``head``), aligned with the text tower when pretrained.
Sizes: ``paper`` and ``smoke`` (the same families, tiny). Any other timm model name goes to ``timm_towers``.
Pretrained weights come from ``weights_path``, else the caches/hubs; when they cannot be had the error names
where it looked (never random weights in silence). Files are read by ``weights.read_state_dict``.
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
from .image_tower import EMBED_DIM, ImageTower, WeightsUnavailableError, count_parameters  # noqa: F401
from .timm_towers import architecture as timm_architecture, create_timm_tower
from .weights import read_state_dict


TIMM_NAMES = DerivedNames({  # an extra encoder is its own timm name (``timm_towers``)
    "mambavision": "mamba_vision_B_21k",
    "swin": "swin_base_patch4_window7_224.ms_in22k_ft_in1k",
    "vit": "vit_base_patch32_clip_224.openai",
}, lambda encoder: encoder)

# Environment variables a user can point at local checkpoint files
WEIGHTS_ENV = {"mambavision": "MVLIP_MAMBAVISION_WEIGHTS", "swin": "MVLIP_SWIN_WEIGHTS", "vit": "MVLIP_VIT_WEIGHTS"}
OWN_PROJECTION = ("vit",)  # towers that keep their own projection to CLIP's embedding (timm's head)

# Tiny members of each family for the offline smoke profile (64 px inputs).
SMOKE_OVERRIDES: dict[str, dict[str, Any]] = {
    "mambavision": dict(dim=32, in_dim=16, depths=[1, 1, 2, 2], num_heads=[1, 2, 4, 8],
                        window_size=[8, 8, 4, 2], drop_path_rate=0.0),
    # three stages (16, 8, 4 px maps at 64 px), windows of 8: four stages this small learn too slowly
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
    """What defines the tower's architecture (timm name, size overrides); a finished run is reused only if unchanged."""
    if encoder not in TIMM_NAMES:  # any other timm model, at its own size
        return timm_architecture(encoder, image_size)
    overrides = dict(SMOKE_OVERRIDES[encoder]) if size == "smoke" else {}
    return {"timm_name": TIMM_NAMES[encoder], "size": size, "image_size": image_size,
            "own_projection": encoder in OWN_PROJECTION,
            "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in overrides.items()}}


def create_image_tower(encoder: str, size: str = "paper", pretrained: bool = False,
                       weights_path: str | None = None, image_size: int = 224,
                       embed_dim: int = EMBED_DIM, trust_pickled_weights: bool = False) -> ImageTower:
    """The image tower ``encoder`` at ``size``, with a new ``embed_dim`` projection. A pickled weights file that
    needs more than tensors is refused unless ``trust_pickled_weights`` (or MVLIP_TRUST_PICKLED_WEIGHTS=1)."""
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
        kwargs["act_layer"] = "quick_gelu"  # as OpenAI trained it; timm's `.openai` tag defaults to GELU
    if pretrained and not weights_path:
        weights_path = os.environ.get(WEIGHTS_ENV[encoder]) or None
    if encoder == "mambavision":
        backbone = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        if pretrained:
            _mambavision_pretrained(backbone, weights_path, trust_pickled_weights)
    else:
        num_classes = embed_dim if encoder in OWN_PROJECTION else 0
        if pretrained and weights_path and not Path(weights_path).is_file():
            raise FileNotFoundError(f"parameter image_weights={weights_path!r}: no such file")
        overlay = None  # a local file's tensors, read without running code; timm converts them as its own
        if pretrained and weights_path:
            overlay = dict(state_dict=read_state_dict(weights_path, trust=trust_pickled_weights),
                           file=str(weights_path))
        try:
            backbone = timm.create_model(name, pretrained=pretrained, num_classes=num_classes,
                                         pretrained_cfg_overlay=overlay, **kwargs)
            for cfg in (getattr(backbone, "pretrained_cfg", None), getattr(backbone, "default_cfg", None)):
                if isinstance(cfg, dict):
                    cfg.pop("state_dict", None)  # keep no copy of the tensors in the config
        except Exception as exc:
            if not pretrained or weights_path:
                raise
            hub = timm.models.get_pretrained_cfg(name)
            looked = [f"environment variable {WEIGHTS_ENV[encoder]} (unset)",
                      f"the Hugging Face hub cache and hub, id {getattr(hub, 'hf_hub_id', None)!r}"]
            raise _unavailable(encoder, name, looked, exc) from exc
    return ImageTower(backbone, encoder, name, embed_dim, own_projection=encoder in OWN_PROJECTION)


def scan_skip_only(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False):
    """A stand-in selective scan keeping only the skip term ``u * D``: an upper bound on any scan's speed."""
    return (u * D[:, None]).to(u.dtype)


@contextlib.contextmanager
def selective_scan_replaced(fn: Callable = scan_skip_only):
    """Inside the block, MambaVision's mixers call ``fn`` instead of the selective scan."""
    from mambavision.models import mamba_vision as mv

    saved = mv.selective_scan_fn
    mv.selective_scan_fn = fn
    try:
        yield
    finally:
        mv.selective_scan_fn = saved
