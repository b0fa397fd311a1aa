"""Image towers by name, built through timm's registry, each with a new 512-d projection (paper step 3).

``mambavision``  MambaVision-B-21K (``mamba_vision_B_21k``); ``swin``  Swin-B; ``vit``  CLIP ViT-B/32's own image
tower with CLIP's visual projection (timm's ``head``), aligned with the text tower when pretrained.
Sizes: ``paper`` and ``smoke`` (the same families, tiny). Any other timm model name goes to ``timm_towers``.
Pretrained weights come from ``weights_path``, else ``WEIGHTS_ENV``'s variable, else the caches/hubs, as
``timm_towers.find_weights`` looks for any tower's; when they cannot be had the error names where it looked (never
random weights in silence).
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable

import timm

from .image_tower import EMBED_DIM, ImageTower, WeightsUnavailableError, count_parameters  # noqa: F401
from .timm_towers import create_timm_tower, pretrained_backbone


TIMM_NAMES = {  # the paper's towers; an extra encoder is its own timm name (``timm_towers``)
    "mambavision": "mamba_vision_B_21k",
    "swin": "swin_base_patch4_window7_224.ms_in22k_ft_in1k",
    "vit": "vit_base_patch32_clip_224.openai",
}

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


def architecture(encoder: str, size: str = "paper", image_size: int = 224) -> dict[str, Any]:
    """What defines the tower's architecture (timm name, size overrides); a finished run is reused only if unchanged."""
    if encoder not in TIMM_NAMES:  # any other timm model, at its own size
        return {"timm_name": encoder, "size": "own", "image_size": image_size, "overrides": {}}
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
    num_classes = embed_dim if encoder in OWN_PROJECTION else 0
    build = functools.partial(timm.create_model, name, num_classes=num_classes, **kwargs)
    backbone = (pretrained_backbone(build, encoder, name, weights_path, trust_pickled_weights, WEIGHTS_ENV[encoder])
                if pretrained else build())
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
