"""Encoder names: the paper's three towers and any timm image model; each one's folder and label.

``encoder`` is one of the paper's towers (``mambavision``, ``swin``, ``vit``: ``profiles.ENCODERS``) or a timm
model name with an optional pretrained tag (``convnext_atto``, ``convnext_base.fb_in22k_ft_in1k``,
``vit_base_patch16_clip_224.openai``, ``mamba_vision_T``, which ``import mambavision`` registers into timm).
The paper's towers keep their names, folders and labels; any other name is an *extra* encoder: the study
runs it through the same protocol and chapters, and marks it "beyond the paper" where it stands beside the
paper's towers (the findings judge only the paper's towers).

- ``encoder_folder``: the file-safe folder of an encoder (lowercase ``[a-z0-9._-]``; a name that is not
  already that gets a short hash of itself, so two different models never share a folder).
- ``encoder_label`` / ``tower_name``: what the book calls the model (``CLIP(convnext_atto)``) and its tower.

Asking timm's registry whether a name exists (``check_encoder``, with the closest names for an unknown one) is
the models stage's: ``models.timm_towers``.
"""

from __future__ import annotations

import hashlib
import re

PAPER_ENCODERS = ("mambavision", "swin", "vit")  # = profiles.ENCODERS
_PAPER_LABELS = {"mambavision": "MVLIP", "swin": "CLIP(Swin)", "vit": "CLIP(ViT)"}
_PAPER_TOWERS = {"mambavision": "MambaVision-B-21K", "swin": "Swin-B", "vit": "ViT-B/32"}
BEYOND = "beyond the paper"
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
    """The encoder's folder name (run folders, executed notebooks): the name itself when it is already
    lowercase ``[a-z0-9._-]``, else that form of it plus 6 hex digits of its hash (``mamba_vision_T`` ->
    ``mamba_vision_t-<hash>``): different names never share a folder, on case-insensitive disks too."""
    if _SAFE.fullmatch(encoder) and ".." not in encoder:
        return encoder
    safe = re.sub(r"[^a-z0-9._-]+", "-", encoder.lower()).strip(".-") or "encoder"
    return f"{safe}-{hashlib.sha1(encoder.encode()).hexdigest()[:6]}"


def encoder_label(encoder: str) -> str:
    """What the book calls the model: the paper's names, else ``CLIP(<timm name>)``."""
    return _PAPER_LABELS.get(encoder) or f"CLIP({encoder})"


def tower_name(encoder: str) -> str:
    """The image tower's name: the paper's (``Swin-B``), else the timm name."""
    return _PAPER_TOWERS.get(encoder) or encoder


def marked(label: str, encoder: str) -> str:
    """``label``, with ", beyond the paper" for an extra encoder (tables and figures beside the paper's towers)."""
    return label if is_paper_encoder(encoder) else f"{label}, {BEYOND}"


class DerivedNames(dict):
    """{paper encoder: name}; any other encoder's name is derived from its timm name by ``derive`` (so
    ``ENCODER_LABELS[e]`` works for every encoder while ``e in ENCODER_LABELS`` and iteration stay the
    paper's three towers)."""

    def __init__(self, names, derive):
        super().__init__(names)
        self._derive = derive

    def __missing__(self, key):
        if not isinstance(key, str) or not key:
            raise KeyError(key)
        return self._derive(key)

    def get(self, key, default=None):
        return self[key] if key in self or (isinstance(key, str) and key) else default
