"""The image towers, paper and timm: a timm backbone without its classifier and a new 512-d projection (paper step 3).

``mambavision``  MambaVision-B-21K (``mamba_vision_B_21k``); ``swin``  Swin-B; ``vit``  CLIP ViT-B/32's own image
tower with CLIP's visual projection (timm's ``head``), aligned with the text tower when pretrained. Sizes: ``paper``
and ``smoke`` (the same families, tiny). Any other timm model name is an extra encoder at its own size, built for
the run's ``image_size`` where the model takes ``img_size``; one that cannot run at that size stops with an error
naming the size it needs.

Pretrained weights of every tower, first found wins (read by ``weights.read_state_dict``, keys converted by timm):
1. the ``image_weights`` parameter;
2. ``WEIGHTS_ENV``'s variable for the paper's towers, ``MVLIP_WEIGHTS_<NAME>`` for the others (``weights_env``:
   ``convnext_atto.d2_in1k`` -> ``MVLIP_WEIGHTS_CONVNEXT_ATTO_D2_IN1K``);
3. the Hugging Face hub cache of the tag's repository, then (unless ``HF_HUB_OFFLINE=1``) a download; for weights
   published at a URL, ``$TORCH_HOME/hub/checkpoints/`` (MambaVision's also ``/tmp``) and a download.
Without any, ``WeightsUnavailableError`` names where it looked and how to go on (never random weights in silence).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import timm
import torch
from torch import nn

from ..settings.encoders import PAPER_ENCODERS, has_selective_scan, is_paper_encoder, split_name
from .ssm import install_mamba_ssm_shim
from .weights import read_state_dict

SSM_BACKEND = install_mamba_ssm_shim()  # must precede `import mambavision`

with warnings.catch_warnings():  # mambavision 1.2.0 imports timm's deprecated module paths
    warnings.simplefilter("ignore", FutureWarning)
    import mambavision  # noqa: E402,F401  (registers mamba_vision_* into timm)

EMBED_DIM = 512
HF_FILES = ("model.safetensors", "pytorch_model.bin")  # timm's hub files, the safe one first

TIMM_NAMES = {  # the paper's towers; an extra encoder is its own timm name
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
        # the pooled features' width: timm's ``num_features``; MambaVision keeps it in its final norm
        width = features or getattr(backbone, "num_features", None) or backbone.norm.num_features
        self.proj = nn.Identity() if own_projection else nn.Linear(int(width), embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.backbone(images))


def count_parameters(module: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights were asked for but cannot be had."""


def closest_names(encoder: str, n: int = 5) -> list[str]:
    """The timm names (architectures, and pretrained tags when one was asked for) closest to ``encoder``."""
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
    arch, tag = split_name(encoder)
    if not timm.is_model(arch):
        raise ValueError(f"parameter encoder={encoder!r} is neither a paper tower {list(PAPER_ENCODERS)} nor a timm "
                         f"model; closest timm names: {', '.join(closest_names(encoder)) or 'none'}")
    if tag is not None and encoder not in timm.list_pretrained(f"{arch}.*"):
        tags = timm.list_pretrained(f"{arch}.*")
        raise ValueError(f"parameter encoder={encoder!r}: timm has no pretrained tag {tag!r} for {arch!r}; "
                         f"it has: {', '.join(tags) or 'none (use the name without a tag)'}")
    size = _input_size(encoder)
    if size is not None and (len(size) != 3 or size[0] != 3):
        raise ValueError(f"parameter encoder={encoder!r} is not an image model of 3-channel images (timm's "
                         f"input size {tuple(size)}); CLIP's image tower needs one")
    return encoder


def weights_env(encoder: str) -> str:
    """The environment variable of an extra encoder's weights file: ``MVLIP_WEIGHTS_<NAME>``."""
    return "MVLIP_WEIGHTS_" + re.sub(r"[^A-Z0-9]", "_", encoder.upper())


def _input_size(encoder: str) -> tuple[int, ...] | None:
    """The (channels, height, width) of timm's pretrained configuration of ``encoder``, if it has one."""
    arch, tag = split_name(encoder)
    return getattr(timm.models.get_pretrained_cfg(encoder if tag else arch), "input_size", None)


def _create(name: str, image_size: int, **kwargs: Any) -> nn.Module:
    """timm's model built for ``image_size`` where its constructor takes ``img_size``, else at its own."""
    try:
        return timm.create_model(name, num_classes=0, img_size=image_size, **kwargs)
    except TypeError as exc:
        if "img_size" not in str(exc):
            raise
    return timm.create_model(name, num_classes=0, **kwargs)


def _probe(backbone: nn.Module, encoder: str, image_size: int) -> int:
    """The width of the pooled features of one ``image_size`` image (run in eval mode); ValueError naming the
    size it needs for a model that cannot take it."""
    if not callable(getattr(backbone, "forward_features", None)):
        raise ValueError(f"parameter encoder={encoder!r} is not an image model (no forward_features): CLIP's image "
                         "tower needs timm's image-model interface")
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            out = backbone(torch.zeros(1, 3, image_size, image_size))
    except Exception as exc:
        size = _input_size(encoder)
        need = f"{size[-1]} px" if size else "another size"
        raise ValueError(f"encoder {encoder!r} does not run at image_size={image_size} px (it needs {need}: "
                         f"set image_size to it, e.g. -p image_size={need.split()[0]}, or choose another model); "
                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    finally:
        backbone.train(was_training)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"parameter encoder={encoder!r} is not an image model with pooled features (without its "
                         f"classifier it returns {shape}, not (batch, features))")
    return int(out.shape[1])


def _unavailable(encoder: str, env: str, looked: list[str], cause: BaseException | None) -> WeightsUnavailableError:
    where = "\n  ".join(looked)
    msg = (f"pretrained weights for encoder={encoder!r} are not available.\nLooked in:\n  {where}\n"
           f"To go on: download the weights file on a machine with internet (model.safetensors of its hub "
           f"repository, or the checkpoint its publisher releases) and pass its path as image_weights=... (or set "
           f"{env}=/path/to/file), or run with pretrained=False (random weights; results are then not the paper's).")
    if cause is not None:
        msg += f"\nCause: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
    return WeightsUnavailableError(msg)


def find_weights(encoder: str, weights_path: str | None = None, name: str | None = None,
                 env: str | None = None) -> tuple[str, list[str]]:
    """(weights file of the timm model ``name`` (default ``encoder``), where it looked), in the module docstring's
    order, ``env`` (default ``weights_env(encoder)``) second; WeightsUnavailableError when there is none,
    FileNotFoundError for a given path that is no file."""
    name, env = name or encoder, env or weights_env(encoder)
    if weights_path:
        if not Path(weights_path).is_file():
            raise FileNotFoundError(f"parameter image_weights={weights_path!r}: no such file")
        return str(weights_path), []
    if os.environ.get(env):
        if not Path(os.environ[env]).is_file():
            raise FileNotFoundError(f"environment variable {env}={os.environ[env]!r}: no such file")
        return os.environ[env], []
    looked = ["parameter image_weights (unset)", f"environment variable {env} (unset)"]
    arch, tag = split_name(name)
    cfg = timm.models.get_pretrained_cfg(name if tag else arch)
    if cfg is None:
        raise _unavailable(encoder, env, looked + ["timm's pretrained configurations (none for this name)"], None)
    repo, selective = cfg.hf_hub_id or None, has_selective_scan(arch)
    files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_FILES
    cause: BaseException | None = None
    if repo:
        from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

        for file in files:
            cached = try_to_load_from_cache(repo, file)
            if isinstance(cached, str) and Path(cached).is_file():
                return cached, looked
        looked.append(f"the Hugging Face hub cache {constants.HF_HUB_CACHE}, repository {repo!r}, files {list(files)}")
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("1", "true", "yes", "on"):
            for file in files:
                try:
                    return hf_hub_download(repo, file), looked
                except Exception as exc:  # offline, or the repository lacks this file
                    cause = exc
            looked.append(f"the Hugging Face hub, repository {repo!r} (download failed)")
        else:
            looked.append("the Hugging Face hub (not asked: HF_HUB_OFFLINE=1)")
    if cfg.url:
        target = Path(torch.hub.get_dir()) / "checkpoints" / (f"{arch}.pth.tar" if selective
                                                              else Path(cfg.url).name)
        # MambaVision's own downloads go to /tmp/<model>.pth.tar
        for place in (target, Path(f"/tmp/{arch}.pth.tar")) if selective else (target,):
            if place.is_file():
                return str(place), looked
            looked.append(str(place))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(cfg.url, str(target), progress=True)
            return str(target), looked
        except Exception as exc:
            target.unlink(missing_ok=True)
            looked.append(f"{cfg.url} (download failed)")
            cause = exc
    raise _unavailable(encoder, env, looked, cause)


def load_mambavision_weights(backbone: nn.Module, path: str, trust: bool = False) -> None:
    """MambaVision's checkpoint ``path`` into ``backbone`` without its classifier (replaced); ValueError naming the
    file when it does not fit."""
    state = {k: v for k, v in read_state_dict(path, trust=trust).items() if not k.startswith("head.")}
    result = backbone.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"weights file {path!r} does not fit: missing {result.missing_keys[:5]}, "
                         f"unexpected {result.unexpected_keys[:5]}")


def pretrained_backbone(build: Callable[..., nn.Module], encoder: str, name: str, weights_path: str | None = None,
                        trust: bool = False, env: str | None = None) -> nn.Module:
    """``build(**timm_kwargs)``'s timm model ``name`` holding the weights ``find_weights`` finds: MambaVision's
    checkpoints loaded as they are, any other file's tensors handed to timm, which converts their keys."""
    path, _ = find_weights(encoder, weights_path, name, env)
    if Path(path).suffix == ".npz":
        raise ValueError(f"encoder {encoder!r}: the weights file {path!r} is a .npz, which timm reads with its "
                         "own code; convert it to .safetensors (timm.create_model(..., pretrained=True) on a "
                         "machine with internet, then safetensors.torch.save_file(model.state_dict(), ...)) and "
                         "pass that file")
    if has_selective_scan(name):
        backbone = build()
        load_mambavision_weights(backbone, path, trust)
        return backbone
    state = read_state_dict(path, trust=trust)
    try:
        backbone = build(pretrained=True, pretrained_cfg_overlay=dict(state_dict=state, file=path))
    except RuntimeError as exc:  # other keys or shapes
        raise ValueError(f"weights file {path!r} does not fit {name!r} ({str(exc).splitlines()[0]})") from exc
    for cfg in (getattr(backbone, "pretrained_cfg", None), getattr(backbone, "default_cfg", None)):
        if isinstance(cfg, dict):
            cfg.pop("state_dict", None)  # keep no copy of the tensors in the config
    return backbone


def create_timm_tower(encoder: str, pretrained: bool = False, weights_path: str | None = None,
                      image_size: int = 224, embed_dim: int = EMBED_DIM,
                      trust_pickled_weights: bool = False) -> ImageTower:
    """The timm model ``encoder`` without its classifier, built for ``image_size`` where it can be, with
    pretrained weights when asked, and a new ``embed_dim`` projection."""
    check_encoder(encoder)
    name = split_name(encoder)[0] if has_selective_scan(encoder) else encoder
    build = functools.partial(_create, name, image_size)
    backbone = pretrained_backbone(build, encoder, name, weights_path, trust_pickled_weights) if pretrained else build()
    features = _probe(backbone, encoder, image_size)
    return ImageTower(backbone, encoder, encoder, embed_dim, features=features)


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
    if encoder not in TIMM_NAMES:  # any other timm image model, at its own size
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
