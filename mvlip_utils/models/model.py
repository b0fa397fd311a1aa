"""CLIP assembly: an image tower from ``towers`` and the frozen open_clip ViT-B-32 text tower.

``PromptBank`` encodes every (class, template) prompt once; training looks captions up in it and zero-shot
evaluation uses its classifier (open_clip's ``build_zero_shot_classifier`` over the cached features).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .weights import read_state_dict

TEXT_MODEL = "ViT-B-32"
TEXT_PRETRAINED_TAG = "openai"
TEXT_WEIGHTS_ENV = "MVLIP_TEXT_WEIGHTS"


class TextTower(nn.Module):
    """open_clip ViT-B-32's text transformer, token embedding, final norm and projection."""

    def __init__(self, clip_model: nn.Module, tokenizer):
        super().__init__()
        self.transformer = clip_model.transformer
        self.token_embedding = clip_model.token_embedding
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.register_buffer("attn_mask", clip_model.attn_mask, persistent=False)
        self.text_pool_type = getattr(clip_model, "text_pool_type", "argmax")
        self.text_eos_id = getattr(clip_model, "text_eos_id", None)
        self._encode = type(clip_model).encode_text  # open_clip's own forward, bound to these modules
        self.tokenizer = tokenizer

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self._encode(self, tokens, normalize=normalize)

    def freeze(self) -> "TextTower":
        for p in self.parameters():
            p.requires_grad_(False)
        return self.eval()


def create_text_tower(pretrained: bool = False, weights_path: str | None = None,
                      trust_pickled_weights: bool = False) -> TextTower:
    """The ViT-B-32 text tower; ``openai`` weights from a local file or open_clip's cache/hub when asked. A pickled
    file that needs more than tensors is refused unless ``trust_pickled_weights`` (or MVLIP_TRUST_PICKLED_WEIGHTS=1)."""
    weights_path = weights_path or (os.environ.get(TEXT_WEIGHTS_ENV) if pretrained else None)
    if pretrained and weights_path and not Path(weights_path).is_file():
        raise FileNotFoundError(f"parameter text_weights={weights_path!r}: no such file")
    if pretrained and weights_path:  # open_clip_pytorch_model.bin or .safetensors of open_clip's ViT-B-32
        state = read_state_dict(weights_path, trust=trust_pickled_weights)
        clip_model = open_clip.create_model(TEXT_MODEL, pretrained=None, force_quick_gelu=True)
        try:
            clip_model.load_state_dict(state, strict=True)
        except RuntimeError as exc:  # other keys or shapes: not an open_clip ViT-B-32 file
            raise ValueError(f"parameter text_weights={str(weights_path)!r}: the file does not fit open_clip "
                             f"{TEXT_MODEL!r} ({exc})") from exc
        return TextTower(clip_model, open_clip.get_tokenizer(TEXT_MODEL))
    tag = TEXT_PRETRAINED_TAG if pretrained else None
    try:
        # the OpenAI weights need QuickGELU; open_clip's plain ViT-B-32 config has GELU and only warns
        clip_model = open_clip.create_model(TEXT_MODEL, pretrained=tag, force_quick_gelu=pretrained)
    except Exception as exc:
        if not pretrained:
            raise
        from .towers import WeightsUnavailableError

        raise WeightsUnavailableError(
            f"pretrained weights for the text tower (open_clip {TEXT_MODEL!r}, tag {TEXT_PRETRAINED_TAG!r}) are "
            f"not available.\nLooked in:\n  environment variable {TEXT_WEIGHTS_ENV} (unset)\n  open_clip's "
            f"cache and hub for ({TEXT_MODEL}, {TEXT_PRETRAINED_TAG})\nTo go on: pass text_weights=/path/to/"
            f"open_clip_pytorch_model.bin (or set {TEXT_WEIGHTS_ENV}), or run with pretrained=False.\n"
            f"Cause: {type(exc).__name__}: {exc}") from exc
    return TextTower(clip_model, open_clip.get_tokenizer(TEXT_MODEL))


class PromptBank:
    """Normalised text features of every (class, template) prompt, computed once."""

    def __init__(self, text_tower: TextTower, classnames: Sequence[str], templates: Sequence[str],
                 device: str | torch.device = "cpu", batch_size: int = 256, progress: bool = True,
                 features: torch.Tensor | None = None):
        """``features``: the (prompts, dim) features of these prompts computed before (a cache), else computed."""
        self.classnames = list(classnames)
        self.templates = list(templates)
        self.prompts = [t.format(c) for c in self.classnames for t in self.templates]
        self.index = {p: i for i, p in enumerate(self.prompts)}
        if features is None:
            chunks = []
            with torch.no_grad():
                for start in tqdm(range(0, len(self.prompts), batch_size), desc="text features",
                                  disable=not progress, leave=False):
                    tokens = text_tower.tokenizer(self.prompts[start:start + batch_size]).to(device)
                    chunks.append(text_tower.encode_text(tokens, normalize=True).float())
            features = torch.cat(chunks)
        flat = features.to(device)
        self.features = flat.reshape(len(self.classnames), len(self.templates), -1)  # (C, T, D)
        self.classifier = open_clip.build_zero_shot_classifier(
            self, self.tokenize_indices, self.classnames, self.templates, num_classes_per_batch=None,
            device=flat.device)  # (D, C): open_clip's template averaging, over the cached features

    # open_clip's classifier builder calls these two (tokenizer, model.encode_text): here they read the cache
    def tokenize_indices(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.tensor([self.index[t] for t in texts])

    def encode_text(self, indices: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.features.reshape(-1, self.features.shape[-1])[indices.to(self.features.device)]

    def caption_features(self, labels: torch.Tensor, template_indices: torch.Tensor) -> torch.Tensor:
        return self.features[labels.to(self.features.device), template_indices.to(self.features.device)]

    def captions(self, labels: torch.Tensor, template_indices: torch.Tensor) -> list[str]:
        return [self.templates[t].format(self.classnames[c]) for c, t in zip(labels.tolist(), template_indices.tolist())]


class MVLIP(nn.Module):
    """CLIP with a swappable image tower; the text tower is frozen unless ``train_text``."""

    def __init__(self, image_tower: nn.Module, text_tower: TextTower, temperature: float = 0.07,
                 learn_temperature: bool = False, train_text: bool = False):
        super().__init__()
        self.visual = image_tower
        self.text = text_tower
        self.train_text = train_text
        if not train_text:
            self.text.freeze()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)), requires_grad=learn_temperature)

    def train(self, mode: bool = True) -> "MVLIP":
        super().train(mode)
        if not self.train_text:
            self.text.eval()  # frozen: no dropout, eval mode always
        return self

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        return self.text.encode_text(tokens, normalize=normalize)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]
