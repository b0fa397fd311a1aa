"""Every setting of the study in one place: each parameter's default and help text, and the three profiles.

``smoke`` is the offline default: the same tower families at tiny widths, random weights, a generated
coloured-shapes dataset at 64 px, so that the whole study runs on a 2-core CPU in minutes. ``cuda-smoke`` is
the same on a CUDA GPU, with every training step checked (the GPU test tier runs it; a test profile, its
edition is never recorded).
``speed`` measures time, throughput and memory at paper size without the paper's inputs: the paper's
architectures and protocol at 224 px with random weights, on a generated ImageNet-mini-shaped folder of
real JPEG files (1,000 wnid classes), a few epochs, on a CUDA GPU. Its accuracy means nothing.
``paper`` is the paper's protocol: pretrained paper-size towers, ImageNet-mini, 20 epochs, batch 32,
AdamW(1e-4, wd 0.01) on the image tower and projection, cosine per step, clip 1.0, the paper's float32
numerics, T = 0.07.
Only ``paper`` runs can confirm or refute the paper's accuracy claims.

Two kinds of parameters: ``StudyConfig`` decides a run (what is trained and how); ``BenchSettings`` decides
how the notebooks measure (repeats, resolutions, batch sizes of the benchmark). Each field carries its help
text (``help_text``), which the command lines print and the notebooks' parameters cells repeat.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any

from .encoders import PAPER_ENCODERS, DerivedNames, encoder_label, tower_name

ENCODERS = PAPER_ENCODERS  # the paper's towers; `encoder` also takes any timm image model (mvlip_utils.encoders)
# What the book calls each model (the paper's names) and its image tower; an extra (timm) encoder's are
# derived from its name: ENCODER_LABELS["convnext_atto"] == "CLIP(convnext_atto)"
ENCODER_LABELS = DerivedNames({"mambavision": "MVLIP", "swin": "CLIP(Swin)", "vit": "CLIP(ViT)"}, encoder_label)
TOWER_NAMES = DerivedNames({"mambavision": "MambaVision-B-21K", "swin": "Swin-B", "vit": "ViT-B/32"}, tower_name)
MODEL_SIZES = ("smoke", "paper")
# fp32: every float32 op in full fp32 (TF32 off for matmuls and cuDNN convolutions).
# fp32-tf32conv: PyTorch's default float32 mode, what the paper ran as "FP32": matmuls in fp32, cuDNN
#   convolutions in TF32 (torch.backends.cudnn.allow_tf32 defaults to True).
# tf32: TF32 for matmuls and convolutions. bf16: autocast to bfloat16 (weights stay fp32).
PRECISIONS = ("fp32", "fp32-tf32conv", "tf32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
DATA_GENERATORS = ("generated", "generated-imagenet")
# eager: torch.optim.AdamW with its default (foreach) implementation, as the authors' code;
# fused: AdamW(fused=True), one kernel for the whole update; compiled: fused + torch.compile of the image tower
TRAIN_STEPS = ("eager", "fused", "compiled", "graphed")


def _param(default: Any, help: str, **kwargs: Any):
    """A dataclass field with its help text (``help_text(cls, name)``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kwargs)
    return field(default=default, metadata={"help": help}, **kwargs)


@dataclass
class StudyConfig:
    """All parameters of one run (one encoder under one profile)."""

    profile: str = _param("smoke", "smoke (offline default, CPU, random weights), speed (paper size, random "
                                   "weights, generated JPEGs, CUDA) or paper (the paper's protocol)")
    encoder: str = _param("mambavision", "mambavision (MVLIP), swin (CLIP(Swin)), vit (CLIP(ViT)), or any timm "
                                         "image model with its optional pretrained tag (e.g. convnext_atto, "
                                         "convnext_base.fb_in22k_ft_in1k), run at its own size beyond the paper")
    model_size: str = _param("smoke", "smoke (tiny towers of each family) or paper (the paper's architectures)")
    data: str = _param("generated", "generated (offline coloured shapes), generated-imagenet (ImageNet-mini-"
                                    "shaped JPEG folder, random images) or a folder with train/ and val/")
    data_dir: str = _param("data", "where generated datasets and the uint8 caches are written")
    results_dir: str = _param("results", "run folders: <results_dir>/<profile>/<encoder>/")
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
                                    "paper's 'FP32': TF32 convolutions), tf32 or bf16")
    train_step: str = _param("eager", "eager (AdamW as the authors), fused (fused AdamW), compiled "
                                      "(fused + torch.compile of the image tower) or graphed (compiled, "
                                      "replayed as CUDA graphs: mode reduce-overhead)")
    device: str = _param("auto", "auto, cpu, cuda or cuda:N")
    seed: int = _param(0, "seed of the towers' initialisation, data order and caption draws")
    deterministic: bool = _param(False, "True: deterministic algorithms (torch.use_deterministic_algorithms, "
                                        "CUBLAS_WORKSPACE_CONFIG, cuDNN and inductor settings: "
                                        "mvlip_utils.reproducibility), so that a run repeats bit for bit on the same "
                                        "GPU and software, resumed or not; slower. False: PyTorch's defaults (the "
                                        "paper's)")
    num_workers: int = _param(0, "DataLoader worker processes")
    data_cache: bool = _param(False, "True: train and evaluate from a uint8 cache of the CLIP-preprocessed "
                                     "images (the same input tensors, no JPEG decoding every epoch)")
    pretrained: bool = _param(False, "True: pretrained towers (paper profile); False: random weights")
    image_weights: str | None = _param(None, "local checkpoint file for the image tower (or MVLIP_*_WEIGHTS; a timm "
                                             "encoder's: MVLIP_WEIGHTS_<NAME>)")
    text_weights: str | None = _param(None, "local checkpoint file for the text tower (or MVLIP_TEXT_WEIGHTS)")
    trust_pickled_weights: bool = _param(False, "True: a pickled weights file or old run checkpoint that needs more "
                                                "than tensors is loaded in full, which can run code from it; only for "
                                                "files you trust (or set MVLIP_TRUST_PICKLED_WEIGHTS to 1)")
    note: str = _param("", "free-form note carried into config.json")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> "StudyConfig":
        return validate(dataclasses.replace(self, **_checked_keys(overrides)))


@dataclass
class BenchSettings:
    """How the notebooks measure (not what a run computes): the benchmark chapter's sizes and repeats, and
    the training chapter's check that a faster training step computes the same losses."""

    warmup: int = _param(3, "benchmark: untimed calls before timing")
    repeats: int = _param(10, "benchmark: timed batches; the median and the 10th-90th percentile are reported")
    eval_repeats: int = _param(2, "benchmark: passes of the whole evaluation loop (the paper's method)")
    eval_workers: int = _param(4, "benchmark: DataLoader workers decoding JPEGs in the paper's method (paper: 4)")
    best_batch: int = _param(256, "benchmark: batch of the best settings (bf16, channels_last)")
    resolutions: list | None = _param(None, "benchmark: resolution sweep in px; None: image_size x 1, 2, 3")
    sweep_batch: int = _param(32, "benchmark: batch at the first resolution of the sweep (pixels per batch "
                                  "held about constant)")
    sweep_precision: str | None = _param(None, "benchmark: precision of the sweep; None: the run's")
    compile_timeout_s: int = _param(0, "benchmark: time limit of the torch.compile child process; 0: skip")
    step_check_images: int = _param(0, "training: images per epoch of the same-numerics check of the faster "
                                       "step against the eager one (two epochs each); 0: skip")
    step_check_steps: list = _param(["eager", "fused"], "training: the steps the check compares, the eager one "
                                                        "first (from eager, fused, compiled, graphed)")
    step_profile_steps: int = _param(0, "training: steps of each checked step profiled with torch.profiler "
                                        "after its check (where the time goes); 0: none")
    step_check_deterministic: bool = _param(False, "training: after the check, train the run's own step twice "
                                                   "more in deterministic mode: its images/s against the default "
                                                   "mode's, and whether the two repeats' losses are bit-identical")


PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(
        profile="smoke", model_size="smoke", data="generated", image_size=64, epochs=6,
        batch_size=32, lr=1e-3, pretrained=False, device="auto",
    ),
    # the smoke edition on a CUDA GPU (the GPU test tier runs its whole study): tiny towers, generated data
    "cuda-smoke": dict(
        profile="cuda-smoke", model_size="smoke", data="generated", image_size=64, epochs=2,
        batch_size=32, lr=1e-3, pretrained=False, device="cuda",
    ),
    # the paper profile's step and numerics on 11,000 training images an epoch (10,976 trained in whole
    # batches), so that its second epoch is a steady measurement of the paper study's epoch
    "speed": dict(
        profile="speed", model_size="paper", data="generated-imagenet", generated_classes=1000,
        generated_train_per_class=11, generated_val_per_class=3, image_size=224, epochs=2, batch_size=32,
        eval_batch_size=32, lr=1e-4, pretrained=False, precision="fp32-tf32conv", train_step="graphed",
        device="cuda", num_workers=4, data_cache=True,
    ),
    "paper": dict(
        profile="paper", model_size="paper", data="data/imagenet-mini", image_size=224, epochs=20,
        batch_size=32, pretrained=True, precision="fp32-tf32conv", num_workers=4, data_cache=True,
        # the graphed step (torch.compile, replayed as CUDA graphs) keeps the eager per-epoch losses (within
        # 1e-4) with the least GPU kernel time per step of the four steps; the speed edition trains with it and
        # its training chapters check it against the eager step (book/recorded/speed, step_check.json)
        train_step="graphed",
    ),
}

BENCH_PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(warmup=2, repeats=5, eval_repeats=2, eval_workers=2, best_batch=64, sweep_batch=32,
                  compile_timeout_s=0, step_check_images=192, step_profile_steps=3, step_check_deterministic=True),
    "cuda-smoke": dict(warmup=1, repeats=3, eval_repeats=1, eval_workers=2, best_batch=64, resolutions=[64, 128],
                       sweep_batch=32, compile_timeout_s=0, step_check_images=128,
                       step_check_steps=["eager", "fused", "compiled", "graphed"], step_profile_steps=3,
                       step_check_deterministic=True),
    # the step check: the run's (the paper profile's) graphed step against the authors' eager one, both
    # profiled; deterministic mode's cost is measured apart (results/gpu-tier/deterministic-cost-h200.txt)
    "speed": dict(warmup=5, repeats=20, eval_repeats=2, eval_workers=4, best_batch=256,
                  resolutions=[224, 448, 672, 896, 1024], sweep_batch=128, sweep_precision="bf16",
                  compile_timeout_s=120, step_check_images=1024, step_check_steps=["eager", "graphed"],
                  step_profile_steps=8, step_check_deterministic=False),
    "paper": dict(warmup=5, repeats=20, eval_repeats=2, eval_workers=4, best_batch=256,
                  resolutions=[224, 448, 672, 896, 1024], sweep_batch=128, sweep_precision="bf16",
                  compile_timeout_s=120, step_check_images=1024),
}

# What each profile's numbers can mean; the book opens every chapter of a run with the first sentence.
PROFILE_MEANING = {
    "smoke": ("Random-weight smoke run: tiny towers, generated coloured shapes, a few epochs on a CPU. It shows "
              "that the pipeline works; none of its numbers (accuracy, loss or speed) says anything about "
              "the paper's claims."),
    "cuda-smoke": ("Random-weight smoke run on a CUDA GPU: the smoke edition's tiny towers and generated coloured "
                   "shapes, there to test the GPU path (the GPU test tier); none of its numbers says anything about "
                   "the paper's claims."),
    "speed": ("Random-weight speed run: the paper's architectures, protocol and 224 px on a generated "
              "ImageNet-mini-shaped folder of random JPEG images. Accuracy and loss here are meaningless "
              "(random weights, random images); time, throughput and memory are what it measures."),
    "paper": ("The paper's protocol: pretrained towers fine-tuned on ImageNet-mini. Its accuracy, loss and "
              "speed can speak to the paper's claims."),
}


def help_text(cls: type, name: str) -> str:
    """The help text of field ``name`` of StudyConfig or BenchSettings."""
    for f in fields(cls):
        if f.name == name:
            return f.metadata.get("help", "")
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def _checked_keys(overrides: dict[str, Any], cls: type = StudyConfig) -> dict[str, Any]:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; known parameters: {sorted(known)}")
    return overrides


def validate(config: StudyConfig) -> StudyConfig:
    """Raise ValueError naming the first bad parameter."""
    if not isinstance(config.encoder, str) or not config.encoder:  # timm's registry is asked by models.timm_towers
        raise ValueError(f"parameter encoder={config.encoder!r} must be a paper tower {list(PAPER_ENCODERS)} or a "
                         "timm model name")
    choices = {"model_size": MODEL_SIZES, "precision": PRECISIONS,
               "device": DEVICES, "profile": tuple(PROFILES), "train_step": TRAIN_STEPS}
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
    if config.data == "generated-imagenet" and config.generated_classes > 1000:
        raise ValueError(f"parameter generated_classes={config.generated_classes} must be <= 1000 with "
                         "data='generated-imagenet' (ImageNet-1k's wnids)")
    return config


def get_config(profile: str = "smoke", **overrides: Any) -> StudyConfig:
    """The settings of ``profile`` with ``overrides`` applied (None values are ignored)."""
    if profile not in PROFILES:
        raise ValueError(f"parameter profile={profile!r} is not one of {list(PROFILES)}")
    values = dict(PROFILES[profile])
    values.update({k: v for k, v in _checked_keys(overrides).items() if v is not None})
    return validate(StudyConfig(**values))


def get_bench_settings(profile: str = "smoke", **overrides: Any) -> BenchSettings:
    """The measuring settings of ``profile`` with ``overrides`` applied (None values are ignored)."""
    if profile not in BENCH_PROFILES:
        raise ValueError(f"parameter profile={profile!r} is not one of {list(BENCH_PROFILES)}")
    values = dict(BENCH_PROFILES[profile])
    values.update({k: v for k, v in _checked_keys(overrides, BenchSettings).items() if v is not None})
    settings = BenchSettings(**values)
    for name in ("repeats", "eval_repeats", "best_batch", "sweep_batch"):
        if int(getattr(settings, name)) < 1:
            raise ValueError(f"parameter {name}={getattr(settings, name)!r} must be >= 1")
    for name in ("warmup", "eval_workers", "compile_timeout_s", "step_check_images", "step_profile_steps"):
        if int(getattr(settings, name)) < 0:
            raise ValueError(f"parameter {name}={getattr(settings, name)!r} must be >= 0")
    if settings.resolutions is not None and (not settings.resolutions or any(int(r) < 16 for r in settings.resolutions)):
        raise ValueError(f"parameter resolutions={settings.resolutions!r} must be a list of sizes >= 16 px")
    steps = list(settings.step_check_steps)
    if not steps or steps[0] != "eager" or any(step not in TRAIN_STEPS for step in steps):
        raise ValueError(f"parameter step_check_steps={settings.step_check_steps!r} must start with 'eager' and "
                         f"hold steps from {list(TRAIN_STEPS)}")
    if settings.sweep_precision is not None and settings.sweep_precision not in PRECISIONS:
        raise ValueError(f"parameter sweep_precision={settings.sweep_precision!r} is not one of {list(PRECISIONS)}")
    return settings


# Parameters that do not change what a run computes, so a finished or checkpointed run made with other values
# is still the same run: device (the same protocol on other hardware, which rounds differently as two GPUs
# do; the precision mode is its own parameter; config.json records the resolved device), num_workers (the
# shuffle order and every seed come from seeded generators in the main process; the transforms draw nothing
# at random), note (free text), data_cache (bit-identical input tensors; tests compare the inputs and the
# histories), trust_pickled_weights (decides whether a file may be loaded, not what it holds). Everything
# else, epochs included, decides the run (run_folder.RunMismatchError).
RUN_IRRELEVANT = ("device", "num_workers", "note", "data_cache", "trust_pickled_weights")


def changed_parameters(saved: dict[str, Any], config: StudyConfig) -> dict[str, Any]:
    """{name: (saved, now)} for the parameters where ``config`` differs from a saved configuration.

    A key missing from ``saved`` (written before that parameter existed) counts as its default.
    """
    defaults = StudyConfig().to_dict()
    return {k: (saved.get(k, defaults[k]), v) for k, v in config.to_dict().items()
            if k not in RUN_IRRELEVANT and saved.get(k, defaults[k]) != v}


# Profiles that test the code on a GPU: their editions are build products (book/executed/, results/<profile>/
# git-ignored), never recorded into book/recorded/ as the editions the book reports.
TEST_PROFILES = ("cuda-smoke",)


def records_edition(profile: str) -> bool:
    """Whether a profile's edition is recorded (its GPU chapters kept as executed under book/recorded/ and
    included in every book, never run again on a machine without CUDA): the GPU profiles but the test ones."""
    return needs_cuda(profile) and profile not in TEST_PROFILES


def needs_cuda(profile: str) -> bool:
    """Whether a profile's runs are made on a CUDA GPU (its book edition is then recorded, not rebuilt
    on machines without one)."""
    return PROFILES[profile].get("device") == "cuda" or PROFILES[profile].get("model_size") == "paper"


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"parameter device={device!r} but no CUDA device is available; use 'cpu' or 'auto' "
                         "(the speed profile needs a CUDA GPU)")
    return device
