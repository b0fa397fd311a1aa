"""Every setting of the study: each parameter's default and help text (``StudyConfig``: a run; ``BenchSettings``:
how the notebooks measure), and the profiles: ``smoke`` (offline, CPU, tiny towers), ``cuda-smoke`` (the same on
a GPU, never recorded), ``speed`` (paper architectures, random weights, CUDA: time and memory) and ``paper``
(the paper's protocol; the only one that can judge its accuracy claims)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, Callable

from .encoders import ENCODER_LABELS, PAPER_ENCODERS  # noqa: F401 - ENCODER_LABELS: the notebooks import it here

ENCODERS = PAPER_ENCODERS
MODEL_SIZES = ("smoke", "paper")
PRECISIONS = ("fp32", "fp32-tf32conv", "tf32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
TRAIN_STEPS = ("eager", "fused", "compiled", "graphed")


def _param(default: Any, help: str, internal: bool = False):
    """A dataclass field with its help text; ``internal`` fields are set by the code, not by the user."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, "internal": internal})
    return field(default=default, metadata={"help": help, "internal": internal})


@dataclass
class StudyConfig:
    """All parameters of one run (one encoder and one seed under one profile)."""

    profile: str = _param("smoke", "smoke (offline default, CPU, random weights), speed (paper size, random "
                                   "weights, generated JPEGs, CUDA) or paper (the paper's protocol)")
    encoder: str = _param("mambavision", "mambavision (MVLIP), swin (CLIP(Swin)), vit (CLIP(ViT)), or any timm "
                                         "image model with its optional pretrained tag (e.g. convnext_atto, "
                                         "convnext_base.fb_in22k_ft_in1k), run at its own size beyond the paper")
    model_size: str = _param("smoke", "smoke (tiny towers of each family) or paper (the paper's architectures)")
    data: str = _param("generated", "generated (offline coloured shapes), generated-imagenet (ImageNet-mini-"
                                    "shaped JPEG folder, random images) or a folder with train/ and val/")
    data_dir: str = _param("data", "where generated datasets and the uint8 caches are written")
    results_dir: str = _param("results", "run folders: <results_dir>/<profile>/<encoder>/seed-<seed>/")
    image_size: int = _param(64, "input resolution in pixels (paper: 224)")
    generated_classes: int = _param(10, "generated datasets: number of classes")
    generated_train_per_class: int = _param(48, "generated datasets: training images per class")
    generated_val_per_class: int = _param(12, "generated datasets: validation images per class")
    epochs: int = _param(20, "training epochs (paper: 20)")
    batch_size: int = _param(32, "global training batch (paper: 32; drop_last)")
    eval_batch_size: int = _param(32, "evaluation batch (paper: 32)")
    lr: float = _param(1e-4, "AdamW learning rate, cosine-annealed per step to 0 (paper: 1e-4)")
    weight_decay: float = _param(0.01, "AdamW weight decay (paper: 0.01)")
    grad_clip: float = _param(1.0, "gradient-norm clip, 0 for none (paper: 1.0)")
    temperature: float = _param(0.07, "contrastive temperature T, logit scale 1/T (paper: 0.07)")
    learn_temperature: bool = _param(False, "True: learn the temperature (the paper keeps it fixed)")
    train_text: bool = _param(False, "True: train the text tower too (the paper freezes it)")
    precision: str = _param("fp32", "fp32 (TF32 off everywhere), fp32-tf32conv (PyTorch's default, the "
                                    "paper's 'FP32': TF32 convolutions), tf32, bf16 or fp16 (autocast)")
    train_step: str = _param("eager", "eager (AdamW as the authors), fused (fused AdamW), compiled "
                                      "(fused + torch.compile of the image tower) or graphed (compiled, "
                                      "replayed as CUDA graphs: mode reduce-overhead)")
    device: str = _param("auto", "auto, cpu, cuda or cuda:N")
    seeds: list = _param([0], "the seeds: each encoder is trained once per seed (its projection's or tower's "
                              "initialisation, data order and caption draws), each seed's run in its own folder")
    seed: int = _param(0, "the seed of this run (one of seeds)", internal=True)
    deterministic: bool = _param(False, "True: deterministic algorithms (torch.use_deterministic_algorithms, "
                                        "CUBLAS_WORKSPACE_CONFIG, cuDNN and inductor settings), so that a run "
                                        "repeats bit for bit on the same GPU and software, resumed or not; "
                                        "slower. False: PyTorch's defaults (the paper's)")
    num_workers: int = _param(0, "DataLoader worker processes")
    data_cache: bool = _param(False, "True: train and evaluate from a uint8 cache of the CLIP-preprocessed "
                                     "images (the same input tensors, no JPEG decoding every epoch)")
    pretrained: bool = _param(False, "True: pretrained towers (paper profile); False: random weights")
    image_weights: str | None = _param(None, "local checkpoint file for the image tower (or MVLIP_*_WEIGHTS; a timm "
                                             "encoder's: MVLIP_WEIGHTS_<NAME>)")
    text_weights: str | None = _param(None, "local checkpoint file for the text tower (or MVLIP_TEXT_WEIGHTS)")
    trust_pickled_weights: bool = _param(False, "True: a pickled weights file or run checkpoint that needs more "
                                                "than tensors is loaded in full, which can run code from it; only for "
                                                "files you trust (or set MVLIP_TRUST_PICKLED_WEIGHTS to 1)")
    note: str = _param("", "free-form note carried into config.json")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> "StudyConfig":
        return validate(dataclasses.replace(self, **overrides))

    def runs(self) -> list["StudyConfig"]:
        """One configuration per seed, in the order of ``seeds``."""
        return [self.replace(seed=int(s)) for s in self.seeds]


@dataclass
class BenchSettings:
    """How the notebooks measure (not what a run computes): the benchmark's sizes and repeats, the step check."""

    warmup: int = _param(3, "benchmark: untimed calls before timing")
    repeats: int = _param(10, "benchmark: timed batches; the median and the 10th-90th percentile are reported")
    eval_repeats: int = _param(2, "benchmark: passes of the whole evaluation loop (the paper's method)")
    eval_workers: int = _param(4, "benchmark: DataLoader workers decoding JPEGs in the paper's method (paper: 4)")
    best_batch: int = _param(256, "benchmark: batch of the best settings (bf16, channels_last)")
    resolutions: list | None = _param(None, "benchmark: resolution sweep in px; None: image_size x 1, 2, 3")
    sweep_batch: int = _param(32, "benchmark: batch at the first resolution of the sweep (pixels per batch "
                                  "held about constant)")
    sweep_precision: str | None = _param(None, "benchmark: precision of the sweep; None: the run's")
    step_check_images: int = _param(0, "training: images per epoch of the same-numerics check of the faster "
                                       "step against the eager one (two epochs each); 0: skip")
    step_check_steps: list = _param(["eager", "fused"], "training: the steps the check compares, the eager one "
                                                        "first (from eager, fused, compiled, graphed)")
    step_profile_steps: int = _param(0, "training: steps of each checked step profiled with torch.profiler "
                                        "after its check (where the time goes); 0: none")
    step_check_deterministic: bool = _param(False, "training: after the check, train the run's own step twice "
                                                   "more in deterministic mode: its images/s against the default "
                                                   "mode's, and whether the two repeats' losses are bit-identical")


_GPU_BENCH = dict(warmup=5, repeats=20, eval_repeats=2, eval_workers=4, best_batch=256,
                  resolutions=[224, 448, 896, 1792, 2688], sweep_batch=128, sweep_precision="bf16",
                  step_check_images=1024, step_check_steps=["eager", "graphed"], step_profile_steps=8)
# Each profile's run settings (StudyConfig) and measuring settings (BenchSettings) in one dict
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(
        model_size="smoke", data="generated", image_size=64, epochs=6, batch_size=32, lr=1e-3, seeds=[0, 1, 2],
        warmup=2, repeats=5, eval_repeats=2, eval_workers=2, best_batch=64, sweep_batch=32, step_check_images=96,
        step_profile_steps=1, step_check_deterministic=True),
    "cuda-smoke": dict(
        model_size="smoke", data="generated", image_size=64, epochs=2, batch_size=32, lr=1e-3, device="cuda",
        warmup=1, repeats=3, eval_repeats=1, eval_workers=2, best_batch=64, resolutions=[64, 128], sweep_batch=32,
        step_check_images=128, step_check_steps=["eager", "fused", "compiled", "graphed"], step_profile_steps=3,
        step_check_deterministic=True),
    # the paper profile's step and numerics on 11,000 training images an epoch: its second epoch is steady
    "speed": dict(
        model_size="paper", data="generated-imagenet", generated_classes=1000, generated_train_per_class=11,
        generated_val_per_class=3, image_size=224, epochs=2, lr=1e-4, precision="fp32-tf32conv",
        train_step="graphed", device="cuda", num_workers=4, data_cache=True, **_GPU_BENCH),
    "paper": dict(
        model_size="paper", data="data/imagenet-mini", image_size=224, epochs=20, pretrained=True,
        precision="fp32-tf32conv", num_workers=4, data_cache=True, train_step="graphed", seeds=[0, 1, 2],
        **_GPU_BENCH),
}
# Profiles that test the code on a GPU: their editions are build products, never recorded
TEST_PROFILES = ("cuda-smoke",)


def help_text(cls: type, name: str) -> str:
    return {f.name: f.metadata["help"] for f in fields(cls)}[name]


def user_fields(cls: type) -> list[str]:
    """The fields a user sets (notebooks' parameters cells, command lines): all but the internal ones."""
    return [f.name for f in fields(cls) if not f.metadata.get("internal")]


def _profile_values(profile: str, cls: type, overrides: dict[str, Any]) -> dict[str, Any]:
    if profile not in PROFILES:
        raise ValueError(f"parameter profile={profile!r} is not one of {list(PROFILES)}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; known parameters: {sorted(names)}")
    values = {k: v for k, v in PROFILES[profile].items() if k in names}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return values


def _check(obj: Any, ok: Callable[[Any], bool], requirement: str, *names: str) -> None:
    """ValueError naming the first of ``names`` whose value is not ``ok``."""
    for name in names:
        if not ok(getattr(obj, name)):
            raise ValueError(f"parameter {name}={getattr(obj, name)!r} {requirement}")


def validate(config: StudyConfig) -> StudyConfig:
    """Raise ValueError naming the first bad parameter."""
    _check(config, lambda v: isinstance(v, str) and v, f"must be a paper tower {list(PAPER_ENCODERS)} or a timm "
           "model name", "encoder")
    choices = {"model_size": MODEL_SIZES, "precision": PRECISIONS, "device": DEVICES, "profile": tuple(PROFILES),
               "train_step": TRAIN_STEPS}
    for name, allowed in choices.items():
        _check(config, lambda v: v in allowed or (name == "device" and isinstance(v, str) and v.startswith("cuda:")),
               f"is not one of {list(allowed)}", name)
    _check(config, lambda v: int(v) >= 1, "must be >= 1", "epochs", "batch_size", "eval_batch_size", "image_size",
           "generated_classes", "generated_train_per_class", "generated_val_per_class")
    _check(config, lambda v: float(v) > 0, "must be > 0", "lr", "temperature")
    _check(config, lambda v: float(v) >= 0, "must be >= 0", "weight_decay", "grad_clip", "num_workers")
    _check(config, lambda v: isinstance(v, (list, tuple)) and v and len(set(v)) == len(v) and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in v),
        "must be a list of distinct integers >= 0", "seeds")
    if config.data == "generated-imagenet":
        _check(config, lambda v: v <= 1000, "must be <= 1000 with data='generated-imagenet' (ImageNet-1k's wnids)",
               "generated_classes")
    return config


def get_config(profile: str = "smoke", **overrides: Any) -> StudyConfig:
    """The settings of ``profile`` with ``overrides`` (None ignored); ``seed`` defaults to the first of ``seeds``."""
    values = _profile_values(profile, StudyConfig, {**overrides, "profile": profile})
    values.setdefault("seed", int((values.get("seeds") or [0])[0]))
    return validate(StudyConfig(**values))


def get_bench_settings(profile: str = "smoke", **overrides: Any) -> BenchSettings:
    """The measuring settings of ``profile`` with ``overrides`` (None ignored)."""
    settings = BenchSettings(**_profile_values(profile, BenchSettings, overrides))
    _check(settings, lambda v: int(v) >= 1, "must be >= 1", "repeats", "eval_repeats", "best_batch", "sweep_batch")
    _check(settings, lambda v: int(v) >= 0, "must be >= 0", "warmup", "eval_workers", "step_check_images",
           "step_profile_steps")
    _check(settings, lambda v: v is None or (v and all(int(r) >= 16 for r in v)), "must be a list of sizes >= 16 px",
           "resolutions")
    _check(settings, lambda v: list(v)[:1] == ["eager"] and all(step in TRAIN_STEPS for step in v),
           f"must start with 'eager' and hold steps from {list(TRAIN_STEPS)}", "step_check_steps")
    _check(settings, lambda v: v is None or v in PRECISIONS, f"is not one of {list(PRECISIONS)}", "sweep_precision")
    return settings


# Parameters that do not change what a run computes (a run made with other values is the same run)
RUN_IRRELEVANT = ("device", "num_workers", "note", "data_cache", "trust_pickled_weights", "seeds")


def changed_parameters(saved: dict[str, Any], config: StudyConfig) -> dict[str, Any]:
    """{name: (saved, now)} for the parameters where ``config`` differs from a saved configuration."""
    return {k: (saved.get(k), v) for k, v in config.to_dict().items()
            if k not in RUN_IRRELEVANT and saved.get(k) != v}


def records_edition(profile: str) -> bool:
    """Whether a profile's edition is recorded (its GPU chapters kept under book/recorded/, never rerun on a CPU)."""
    return needs_cuda(profile) and profile not in TEST_PROFILES


def needs_cuda(profile: str) -> bool:
    return PROFILES[profile].get("device") == "cuda" or PROFILES[profile].get("model_size") == "paper"


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"parameter device={device!r} but no CUDA device is available; use 'cpu' or 'auto' "
                         "(the speed profile needs a CUDA GPU)")
    return device
