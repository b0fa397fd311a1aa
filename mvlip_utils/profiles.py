"""Every setting of the study in one place: the parameters' defaults and the two profiles.

``paper`` is the paper's protocol (FACTS.md): paper-size towers, ImageNet-mini, 20 epochs, batch 32,
AdamW(1e-4, wd 0.01) on the image tower and projection, cosine per step, clip 1.0, fp32, T = 0.07.
``smoke`` is the offline default: the same families at tiny widths, random weights, a generated
coloured-shapes dataset at 64 px, so that the whole study runs on a 2-core CPU in minutes. Smoke results
are never the paper's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

ENCODERS = ("mambavision", "swin", "vit")
MODEL_SIZES = ("smoke", "paper")
PRECISIONS = ("fp32", "tf32", "bf16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class StudyConfig:
    """All parameters of one run (one encoder under one profile)."""

    profile: str = "smoke"
    encoder: str = "mambavision"
    model_size: str = "smoke"
    # data: "generated" (the offline dataset, written under data_dir) or a folder with train/ and val/
    data: str = "generated"
    data_dir: str = "data"
    results_dir: str = "results"
    image_size: int = 64
    generated_classes: int = 10
    generated_train_per_class: int = 48
    generated_val_per_class: int = 12
    # training protocol (the paper's defaults)
    epochs: int = 20
    batch_size: int = 32
    eval_batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    temperature: float = 0.07
    learn_temperature: bool = False
    train_text: bool = False
    precision: str = "fp32"
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    # keep CLIP-preprocessed images (deterministic) as a uint8 cache under data_dir and normalise on the
    # device: the same inputs, without JPEG decoding in every epoch (for GPU runs)
    data_cache: bool = False
    # weights
    pretrained: bool = False
    image_weights: str | None = None
    text_weights: str | None = None
    # True: a pickled weights file (or an old run checkpoint) that needs more than tensors and the allowed types
    # is loaded in full, which can run code from it; only for files you trust (mvlip_utils/weights.py). Off:
    # such a file is refused. MVLIP_TRUST_PICKLED_WEIGHTS=1 does the same.
    trust_pickled_weights: bool = False
    # free-form note carried into config.json
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> "StudyConfig":
        return validate(dataclasses.replace(self, **_checked_keys(overrides)))


PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(
        profile="smoke", model_size="smoke", data="generated", image_size=64, epochs=6,
        batch_size=32, lr=1e-3, pretrained=False, device="auto",
    ),
    "paper": dict(
        profile="paper", model_size="paper", data="data/imagenet-mini", image_size=224, epochs=20,
        batch_size=32, pretrained=True, precision="fp32", num_workers=4,
    ),
}


def _checked_keys(overrides: dict[str, Any]) -> dict[str, Any]:
    known = {f.name for f in fields(StudyConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; known parameters: {sorted(known)}")
    return overrides


def validate(config: StudyConfig) -> StudyConfig:
    """Raise ValueError naming the first bad parameter."""
    choices = {"encoder": ENCODERS, "model_size": MODEL_SIZES, "precision": PRECISIONS,
               "device": DEVICES, "profile": tuple(PROFILES)}
    for name, allowed in choices.items():
        value = getattr(config, name)
        if name == "device" and isinstance(value, str) and value.startswith("cuda:"):
            continue
        if value not in allowed:
            raise ValueError(f"parameter {name}={value!r} is not one of {list(allowed)}")
    positive = ("epochs", "batch_size", "eval_batch_size", "image_size", "generated_classes",
                "generated_train_per_class", "generated_val_per_class")
    for name in positive:
        if int(getattr(config, name)) < 1:
            raise ValueError(f"parameter {name}={getattr(config, name)!r} must be >= 1")
    for name in ("lr", "temperature"):
        if not float(getattr(config, name)) > 0:
            raise ValueError(f"parameter {name}={getattr(config, name)!r} must be > 0")
    for name in ("weight_decay", "grad_clip", "num_workers"):
        if float(getattr(config, name)) < 0:
            raise ValueError(f"parameter {name}={getattr(config, name)!r} must be >= 0")
    return config


def get_config(profile: str = "smoke", **overrides: Any) -> StudyConfig:
    """The settings of ``profile`` with ``overrides`` applied (None values are ignored)."""
    if profile not in PROFILES:
        raise ValueError(f"parameter profile={profile!r} is not one of {list(PROFILES)}")
    values = dict(PROFILES[profile])
    values.update({k: v for k, v in _checked_keys(overrides).items() if v is not None})
    return validate(StudyConfig(**values))


# Parameters that do not change what a run computes, so a finished or checkpointed run made with other values
# is still the same run: device (the same protocol on other hardware, which rounds differently as two GPUs
# do; the precision mode is its own parameter; config.json records the resolved device), num_workers (the
# shuffle order and every seed come from seeded generators in the main process; the transforms draw nothing
# at random), note (free text), data_cache (bit-identical input tensors; tests compare the inputs and the
# histories), trust_pickled_weights (decides whether a file may be loaded, not what it holds). Everything
# else, epochs included, decides the run (train.RunMismatchError).
RUN_IRRELEVANT = ("device", "num_workers", "note", "data_cache", "trust_pickled_weights")


def changed_parameters(saved: dict[str, Any], config: StudyConfig, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """{name: (saved, now)} for the parameters where ``config`` differs from a saved configuration.

    A key missing from ``saved`` (written before that parameter existed) counts as its default.
    """
    defaults = StudyConfig().to_dict()
    skip = set(RUN_IRRELEVANT) | set(ignore)
    return {k: (saved.get(k, defaults[k]), v) for k, v in config.to_dict().items()
            if k not in skip and saved.get(k, defaults[k]) != v}


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"parameter device={device!r} but no CUDA device is available; use 'cpu' or 'auto'")
    return device
