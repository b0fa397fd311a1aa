"""What every image tower shares: the scan shim and MambaVision's timm models, the 512-d width, the tower module
and the error for pretrained weights that cannot be had."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .ssm import install_mamba_ssm_shim

SSM_BACKEND = install_mamba_ssm_shim()  # must precede `import mambavision`

with warnings.catch_warnings():  # mambavision 1.2.0 imports timm's deprecated module paths
    warnings.simplefilter("ignore", FutureWarning)
    import mambavision  # noqa: E402,F401  (registers mamba_vision_* into timm)

EMBED_DIM = 512


class ImageTower(nn.Module):
    """A timm backbone without its classifier, then a new Linear(features -> 512) (the paper's step 3; ``features``
    defaults to the backbone's width), or none when ``own_projection`` (the backbone already projects to the
    embedding, as CLIP's image tower)."""

    def __init__(self, backbone: nn.Module, encoder_name: str, timm_name: str, embed_dim: int = EMBED_DIM,
                 own_projection: bool = False, features: int | None = None):
        super().__init__()
        self.backbone = backbone
        self.encoder_name = encoder_name
        self.timm_name = timm_name
        self.proj = nn.Identity() if own_projection else nn.Linear(features or feature_dim(backbone), embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(images))


def feature_dim(backbone: nn.Module) -> int:
    """Width of the pooled features: timm's ``num_features``; MambaVision keeps it in its final norm."""
    if hasattr(backbone, "num_features"):
        return int(backbone.num_features)
    return int(backbone.norm.num_features)


def count_parameters(module: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be had."""
