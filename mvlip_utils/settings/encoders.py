"""Encoder names: the paper's three towers and any timm image model (with an optional pretrained tag); each one's
folder and label. Any other than the paper's is an extra encoder, marked "beyond the paper" beside them."""

from __future__ import annotations

import hashlib
import re

PAPER_ENCODERS = ("mambavision", "swin", "vit")
_PAPER_TOWERS = {"mambavision": "MambaVision-B-21K", "swin": "Swin-B", "vit": "ViT-B/32"}
_SAFE = re.compile(r"[a-z0-9][a-z0-9._-]*")


def is_paper_encoder(encoder: str) -> bool:
    return encoder in PAPER_ENCODERS


def has_selective_scan(encoder: str) -> bool:
    """MambaVision's towers: the paper's and any ``mamba_vision_*`` model of the mambavision package."""
    return encoder == "mambavision" or split_name(encoder)[0].startswith("mamba_vision")


def split_name(encoder: str) -> tuple[str, str | None]:
    """(architecture, pretrained tag or None) of a timm name: ``convnext_atto.d2_in1k`` -> (convnext_atto, d2_in1k)."""
    arch, _, tag = encoder.partition(".")
    return arch, (tag or None)


def encoder_folder(encoder: str) -> str:
    """The encoder's folder name: the name itself when lowercase ``[a-z0-9._-]``, else that form plus 6 hex digits
    of its hash (``mamba_vision_T`` -> ``mamba_vision_t-<hash>``), so different names never share a folder."""
    if _SAFE.fullmatch(encoder) and ".." not in encoder:
        return encoder
    safe = re.sub(r"[^a-z0-9._-]+", "-", encoder.lower()).strip(".-") or "encoder"
    return f"{safe}-{hashlib.sha1(encoder.encode()).hexdigest()[:6]}"


def tower_name(encoder: str, size: str = "paper") -> str:
    """The image tower's name: the paper's (``Swin-B``; ``tiny Swin`` at the smoke size), else the timm name."""
    if encoder in _PAPER_TOWERS and size == "smoke":
        return "tiny " + _PAPER_TOWERS[encoder].split("-")[0]
    return _PAPER_TOWERS.get(encoder) or encoder


def marked(label: str, encoder: str) -> str:
    """``label``, with ", beyond the paper" for an extra encoder (tables and figures beside the paper's towers)."""
    return label if is_paper_encoder(encoder) else f"{label}, beyond the paper"


class DerivedNames(dict):
    """{paper encoder: name}; any other encoder's name comes from ``derive`` (``in`` and iteration: the paper's)."""

    def __init__(self, names, derive):
        super().__init__(names)
        self._derive = derive

    def __missing__(self, key):
        if not isinstance(key, str) or not key:
            raise KeyError(key)
        return self._derive(key)

    def get(self, key, default=None):
        return self[key] if key in self or (isinstance(key, str) and key) else default


# What the book calls the model: the paper's names, else ``CLIP(<timm name>)``
ENCODER_LABELS = DerivedNames({"mambavision": "MVLIP", "swin": "CLIP(Swin)", "vit": "CLIP(ViT)"},
                              lambda encoder: f"CLIP({encoder})")
