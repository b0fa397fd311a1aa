"""Encoder names: the paper's three towers and any timm image model; each one's folder and label.

``encoder`` is one of the paper's towers (``mambavision``, ``swin``, ``vit``: ``profiles.ENCODERS``) or a timm
model name with an optional pretrained tag (``convnext_atto``, ``convnext_base.fb_in22k_ft_in1k``,
``vit_base_patch16_clip_224.openai``, ``mamba_vision_T``, which ``import mambavision`` registers into timm).
The paper's towers keep their names, folders and labels; any other name is an *extra* encoder: the study
runs it through the same protocol and chapters, and marks it "beyond the paper" where it stands beside the
paper's towers (the findings judge only the paper's towers).

- ``check_encoder``: an unknown name raises ValueError with the closest timm names (difflib over
  ``timm.list_models``), so the command lines end in one ``error:`` line.
- ``encoder_folder``: the file-safe folder of an encoder (lowercase ``[a-z0-9._-]``; a name that is not
  already that gets a short hash of itself, so two different models never share a folder).
- ``encoder_label`` / ``tower_name``: what the book calls the model (``CLIP(convnext_atto)``) and its tower.

Only the validation asks timm's registry (imported then, with MambaVision's models registered).
"""

from __future__ import annotations

import difflib
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


# ------------------------------------------------------------------------------------ validation
def timm_registry():
    """timm, with MambaVision's models registered (``towers`` imports mambavision behind its scan shim)."""
    from . import towers  # noqa: F401  (registers mamba_vision_* into timm)
    import timm

    return timm


def closest_names(encoder: str, n: int = 5) -> list[str]:
    """The timm names (architectures, and pretrained tags when one was asked for) closest to ``encoder``."""
    timm = timm_registry()
    arch, tag = split_name(encoder)
    pool = timm.list_pretrained() if tag else timm.list_models()
    pool = sorted(set(pool) | set(PAPER_ENCODERS))
    close = difflib.get_close_matches(encoder, pool, n=n, cutoff=0.5)
    if not close:  # a long name: match its parts (e.g. 'convnxt_tiny' -> 'convnext_tiny')
        close = difflib.get_close_matches(arch, pool, n=n, cutoff=0.3)
    return close


def check_encoder(encoder: str) -> str:
    """``encoder`` when it is a paper tower or a timm image model (with a tag timm knows, if it has one);
    ValueError naming the closest names otherwise."""
    if not isinstance(encoder, str) or not encoder:
        raise ValueError(f"parameter encoder={encoder!r} must be a paper tower {list(PAPER_ENCODERS)} or a timm "
                         "model name")
    if is_paper_encoder(encoder):
        return encoder
    timm = timm_registry()
    arch, tag = split_name(encoder)
    if not timm.is_model(arch):
        raise ValueError(f"parameter encoder={encoder!r} is neither a paper tower {list(PAPER_ENCODERS)} nor a timm "
                         f"model; closest timm names: {', '.join(closest_names(encoder)) or 'none'}")
    if tag is not None and encoder not in timm.list_pretrained(f"{arch}.*"):
        tags = timm.list_pretrained(f"{arch}.*")
        raise ValueError(f"parameter encoder={encoder!r}: timm has no pretrained tag {tag!r} for {arch!r}; "
                         f"it has: {', '.join(tags) or 'none (use the name without a tag)'}")
    cfg = timm.models.get_pretrained_cfg(encoder if tag else arch)
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    if size is not None and (len(size) != 3 or size[0] != 3):
        raise ValueError(f"parameter encoder={encoder!r} is not an image model of 3-channel images (timm's "
                         f"input size {tuple(size)}); CLIP's image tower needs one")
    return encoder
