"""Pretrained weights from local files, in each real format, through the code path a user's run takes.

No weights can be downloaded here, so each test writes a checkpoint in the format its source publishes
(random tensors, paper-size architecture), loads it through ``create_image_tower(..., pretrained=True,
weights_path=...)`` / the environment variables / ``create_text_tower(pretrained=True, weights_path=...)``
(what ``experiment.build_experiment`` calls with ``config.image_weights`` / ``config.text_weights``), and checks
that every tensor arrives unchanged. MambaVision and Swin drop the file's classifier and get a new 512-d
projection; CLIP(ViT) keeps CLIP's own visual projection, so with an OpenAI-architecture CLIP file (QuickGELU)
the tower computes what CLIP's ``encode_image`` computes, and with the text tower from the same file the
assembly is CLIP as released. Each loaded paper-size tower also takes a training step at 224 px on the CPU.
The CLIP file is made once for the module (``clip_file``).

Paper-size models are built with their initialisations skipped (``uninitialised_parameters``, seconds saved
each): the source models, whose tensors are then drawn at random for the files, and the towers loaded from
the files, whose every loaded tensor the tests compare with the file's (so a skipped copy could not pass);
a loaded tower's new projection, which only its initialisation fills, is then initialised as ``nn.Linear``
initialises itself when built (``loaded_tower``).

No file runs code when it is loaded: a planted pickle that would create a marker file when unpickled in full
is refused by every entry point (image and text weights, a run checkpoint on resume), with one error that
names the file; a file that needs a type beyond the allowed ones loads only with the explicit opt-in.
"""

import argparse
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import timm
import torch
from conftest import uninitialised_parameters
from safetensors.torch import save_file

from mvlip_utils.models.model import MVLIP, TEXT_WEIGHTS_ENV, create_text_tower
from mvlip_utils.models.towers import load_mambavision_weights
from mvlip_utils.models.towers import TIMM_NAMES, WEIGHTS_ENV, create_image_tower
from mvlip_utils.models.weights import TRUST_ENV, UnsafeWeightsError, load_torch_file, read_state_dict
from mvlip_utils.train import loop
from mvlip_utils.train import run_folder as rf

def source_model(name: str, seed: int, **kwargs) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """timm's ``name`` as its publisher saved it, and its state dict with random values: (model, state)."""
    with uninitialised_parameters():
        model = timm.create_model(name, **kwargs)
    generator = torch.Generator().manual_seed(seed)
    state = {k: (torch.rand(v.shape, generator=generator, dtype=v.dtype) - 0.5) * 0.1 if v.is_floating_point()
             else v.clone() for k, v in model.state_dict().items()}
    return model, state


def assert_backbone_holds(tower, expected: dict[str, torch.Tensor]) -> None:
    """Every backbone tensor equals the file's tensor of the same (converted) name, and nothing is left over."""
    state = tower.backbone.state_dict()
    assert set(state) == set(expected), (sorted(set(state) ^ set(expected)))[:10]
    changed = [k for k, v in expected.items() if not torch.equal(state[k], v)]
    assert not changed, f"tensors changed on loading: {changed[:10]}"


def assert_new_head(tower, file_tensors) -> None:
    """The 512-d projection exists, is not in the backbone, and is none of the file's tensors."""
    assert tower.proj.out_features == 512
    assert not any(k.startswith(("head.fc", "head.weight", "head.bias")) for k in tower.backbone.state_dict())
    for v in file_tensors:
        assert not (v.shape == tower.proj.weight.shape and torch.equal(v, tower.proj.weight))


def loaded_tower(encoder: str, **kwargs):
    """``create_image_tower(encoder, "paper", pretrained=True, **kwargs)`` built without initialising what the
    weights file then replaces; its new projection (if it has one) initialised as ``nn.Linear`` does."""
    with uninitialised_parameters():
        tower = create_image_tower(encoder, size="paper", pretrained=True, **kwargs)
    if isinstance(tower.proj, torch.nn.Linear):
        tower.proj.reset_parameters()
    return tower


def assert_paper_tower_trains(tower) -> None:
    """A forward and backward step at 224 px on the CPU that reaches the projection (the last two tensors: the
    new Linear, or CLIP's own as timm's head)."""
    tower.train()
    out = tower(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, 512) and torch.isfinite(out).all()
    out.pow(2).mean().backward()
    grads = [p.grad for p in tower.parameters() if p.requires_grad]
    assert all(g is not None for g in grads[-2:])
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    tower.zero_grad(set_to_none=True)


def test_mambavision_release_pth_tar_loads_without_its_classifier(tmp_path):
    """NVlabs' MambaVision-B-21K release: a .pth.tar written by timm's train.py (CheckpointSaver): the
    'state_dict' with a 1000-class head, and 'epoch', 'arch', 'optimizer', 'version', 'metric' and 'args',
    the training script's argparse.Namespace, the one type beyond tensors and plain values it needs."""
    source, state = source_model(TIMM_NAMES["mambavision"], seed=1, num_classes=1000)
    assert {"head.weight", "head.bias"} <= set(state)
    path = tmp_path / "mambavision_base_21k.pth.tar"
    optimizer = torch.optim.AdamW(source.parameters(), lr=5e-4, weight_decay=0.05)  # its state left empty (size)
    args = argparse.Namespace(model="mamba_vision_B_21k", lr=5e-4, epochs=300, opt="adamw", opt_betas=[0.9, 0.999],
                              input_size=[3, 224, 224], mean=None, amp=True, device="cuda:0", drop_path=0.5)
    torch.save({"epoch": 300, "arch": "mamba_vision_B_21k", "state_dict": state,
                "optimizer": optimizer.state_dict(), "version": 2, "args": args, "metric": 84.2}, path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == ["argparse.Namespace"]
    del source, optimizer

    tower = loaded_tower("mambavision", weights_path=str(path))
    backbone_state = {k: v for k, v in state.items() if not k.startswith("head.")}
    assert_backbone_holds(tower, backbone_state)
    assert_new_head(tower, state.values())
    assert tower.proj.in_features == 1024
    # a checkpoint that does not fit is refused, naming the file
    broken = tmp_path / "broken.pth.tar"
    torch.save({"state_dict": {k: v for k, v in state.items() if k.startswith("patch_embed.")}}, broken)
    with pytest.raises(ValueError, match="broken.pth.tar"):
        load_mambavision_weights(tower.backbone, str(broken))
    assert_paper_tower_trains(tower)
    # a file that needs a type beyond the release's (here a numpy number, as many training scripts store) is
    # refused, naming the file and the type; with the explicit opt-in, for a file one trusts, it loads (through
    # what create_image_tower calls with trust_pickled_weights, into the tower built above, its weights zeroed)
    elsewhere = tmp_path / "trained_elsewhere.pth.tar"
    torch.save({"state_dict": state, "best_acc1": np.float64(84.2)}, elsewhere)
    with pytest.raises(UnsafeWeightsError, match="numpy") as info:
        load_mambavision_weights(tower.backbone, str(elsewhere))
    assert str(elsewhere) in str(info.value)
    with torch.no_grad():
        for value in tower.backbone.state_dict().values():
            value.zero_()
    load_mambavision_weights(tower.backbone, str(elsewhere), trust=True)
    assert_backbone_holds(tower, backbone_state)


def test_timm_swin_pth_and_safetensors_load_and_drop_head_fc(tmp_path, monkeypatch):
    """timm's Swin-B files (pytorch_model.bin / model.safetensors: a timm state dict with head.fc.*): both
    read to the same tensors without running code; the tower loads them through the environment variable,
    and a weights_path given wins over it."""
    source, state = source_model("swin_base_patch4_window7_224", seed=3, num_classes=1000)
    del source
    assert {"head.fc.weight", "head.fc.bias"} <= set(state)
    expected = {k: v for k, v in state.items() if not k.startswith("head.fc.")}
    pth, st = tmp_path / "pytorch_model.pth", tmp_path / "model.safetensors"
    torch.save(state, pth)
    save_file(state, str(st))
    from_pth, from_st = read_state_dict(pth), read_state_dict(st)
    assert set(from_pth) == set(from_st) == set(state)
    assert all(torch.equal(from_pth[k], v) and torch.equal(from_st[k], v) for k, v in state.items())
    del from_pth, from_st

    monkeypatch.setenv(WEIGHTS_ENV["swin"], str(st))
    with pytest.raises(FileNotFoundError, match="image_weights=.*nope.pth"):  # weights_path first
        create_image_tower("swin", size="paper", pretrained=True, weights_path=str(tmp_path / "nope.pth"))
    tower = loaded_tower("swin")  # no weights_path: the env var
    assert_backbone_holds(tower, expected)
    assert_new_head(tower, state.values())
    assert tower.proj.in_features == 1024
    # the file was read here and handed to timm as tensors; the model's config records the file, not a copy
    assert tower.backbone.pretrained_cfg["file"] == str(st) and "state_dict" not in tower.backbone.pretrained_cfg
    assert_paper_tower_trains(tower)


# ------------------------------------------------------------------------------------ CLIP ViT-B/32
@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    """open_clip's ViT-B-32 with QuickGELU (the OpenAI architecture) and random weights, saved as a
    .safetensors file of its state dict (keys visual.*, transformer.*, token_embedding, ...): (path, model)."""
    torch.manual_seed(4)
    clip = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True).eval()
    path = tmp_path_factory.mktemp("clip") / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    return path, clip


@pytest.fixture(scope="module")
def clip_vit(clip_file):
    path, _ = clip_file
    return loaded_tower("vit", weights_path=str(path)).eval()  # every tensor loaded (the next test compares them)


def test_the_vit_tower_from_a_clip_file_is_clips_image_encoder(clip_file, clip_vit):
    path, clip = clip_file
    images = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(clip_vit(images), clip.encode_image(images), atol=1e-5, rtol=0)
    state, backbone = clip.state_dict(), clip_vit.backbone.state_dict()
    # timm's checkpoint filter renames OpenAI's keys; the tensors arrive unchanged, CLIP's projection as the head
    pairs = {"patch_embed.proj.weight": state["visual.conv1.weight"],
             "cls_token": state["visual.class_embedding"].reshape(1, 1, -1),
             "pos_embed": state["visual.positional_embedding"].unsqueeze(0),
             "norm_pre.weight": state["visual.ln_pre.weight"],
             "blocks.0.attn.qkv.weight": state["visual.transformer.resblocks.0.attn.in_proj_weight"],
             "blocks.11.mlp.fc2.bias": state["visual.transformer.resblocks.11.mlp.c_proj.bias"],
             "norm.weight": state["visual.ln_post.weight"],
             "head.weight": state["visual.proj"].t(), "head.bias": torch.zeros(512)}
    for key, value in pairs.items():
        assert torch.equal(backbone[key], value), key
    visual = {k for k in state if k.startswith("visual.")}
    assert len(backbone) == len(visual) + 1  # every visual tensor (the projection as the head) and a zero bias
    assert isinstance(clip_vit.proj, torch.nn.Identity)  # no new projection after CLIP's own
    # the environment variable is where the tower looks without weights_path
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(WEIGHTS_ENV["vit"], str(path.parent / "missing.safetensors"))
        with pytest.raises(FileNotFoundError, match=f"{WEIGHTS_ENV['vit']}=.*missing.safetensors"):
            create_image_tower("vit", "paper", pretrained=True)


def test_the_text_tower_from_the_same_file_and_the_assembly_are_clip(clip_file, clip_vit, monkeypatch):
    path, clip = clip_file
    state = clip.state_dict()
    with uninitialised_parameters():  # every tensor is loaded from the file, compared below
        text = create_text_tower(pretrained=True, weights_path=str(path))
    for key, value in text.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert {"text_projection", "token_embedding.weight", "transformer.resblocks.11.mlp.c_fc.weight"} <= \
        set(text.state_dict())
    tokens = text.tokenizer(["a photo of a tench", "this is a goldfish"])
    images = torch.randn(2, 3, 224, 224)
    model = MVLIP(clip_vit, text).eval()  # CLIP as released: both towers from CLIP's file
    with torch.no_grad():
        torch.testing.assert_close(text.encode_text(tokens), clip.encode_text(tokens), atol=1e-5, rtol=0)
        ours = model.encode_image(images) @ model.encode_text(tokens).T
        theirs = clip.encode_image(images, normalize=True) @ clip.encode_text(tokens, normalize=True).T
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    # without weights_path the file comes from MVLIP_TEXT_WEIGHTS (a missing one is named, never random weights)
    monkeypatch.setenv(TEXT_WEIGHTS_ENV, str(path.parent / "missing.bin"))
    with pytest.raises(FileNotFoundError, match="text_weights=.*missing.bin"):
        create_text_tower(pretrained=True)


def test_the_clip_vit_tower_trains_at_224_px(clip_vit):
    assert_paper_tower_trains(clip_vit)


# ------------------------------------------------------------------------------ files that would run code
class RunsCode:
    """Unpickled in full, this object creates ``marker``: a stand-in for any code a downloaded file could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def planted(path: Path, marker: Path) -> Path:
    """A file shaped like a checkpoint ({'state_dict': ...}) that creates ``marker`` when unpickled in full."""
    torch.save({"state_dict": {"weight": torch.zeros(2)}, "extra": RunsCode(marker)}, path)
    return path


def test_the_planted_file_runs_code_when_loaded_in_full(tmp_path):
    """What the refusals below prevent, and what the opt-in allows: loading in full runs the file's code."""
    marker = tmp_path / "code-ran"
    path = planted(tmp_path / "model.pth", marker)
    with pytest.raises(UnsafeWeightsError):
        load_torch_file(path)
    assert not marker.exists()
    load_torch_file(path, trust=True)  # trust_pickled_weights=True: only for files one trusts
    assert marker.exists()


ENTRY_POINTS = {
    "mambavision": ("mambavision_base_21k.pth.tar",
                    lambda path: create_image_tower("mambavision", size="paper", pretrained=True,
                                                    weights_path=str(path))),
    "swin": ("pytorch_model.bin",
             lambda path: create_image_tower("swin", size="paper", pretrained=True, weights_path=str(path))),
    "vit": ("open_clip_pytorch_model.bin",
            lambda path: create_image_tower("vit", size="paper", pretrained=True, weights_path=str(path))),
    "text": ("open_clip_pytorch_model.bin", lambda path: create_text_tower(pretrained=True, weights_path=str(path))),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_weights_file_that_would_run_code_is_refused_naming_the_file(entry, tmp_path):
    name, load = ENTRY_POINTS[entry]
    marker = tmp_path / "code-ran"
    path = planted(tmp_path / name, marker)
    with pytest.raises(UnsafeWeightsError) as info, uninitialised_parameters():  # (mambavision: built first)
        load(path)
    message = str(info.value)
    assert str(path) in message and "pathlib" in message  # the file and the type it needs
    assert "safetensors" in message and "trust_pickled_weights=True" in message and TRUST_ENV in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # one message, not torch's too
    assert not marker.exists()


def test_the_environment_variable_is_the_same_opt_in(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    torch.save({"state_dict": {"weight": torch.ones(2)}, "best_acc1": np.float64(1.0)}, path)
    with pytest.raises(UnsafeWeightsError, match="numpy"):
        read_state_dict(path)
    monkeypatch.setenv(TRUST_ENV, "1")
    assert torch.equal(read_state_dict(path)["weight"], torch.ones(2))


# ---------------------------------------------------------------------------------- run checkpoints
def unfinished_copy(finished_runs, tmp_path):
    """A copy of the session's finished seed-0 run (data, prompt cache and run folder) under ``tmp_path``, as a
    run interrupted after its last checkpoint, before its final files: (its config, its checkpoint's state,
    the checkpoint's path). The copy's configuration names its new folders, in the checkpoint too (a run is
    only resumed with the parameters it was made with, its folders among them)."""
    root = Path(shutil.copytree(finished_runs["root"], tmp_path / "copy"))
    config = finished_runs["config"].replace(seed=0, data_dir=str(root / "data"), results_dir=str(root / "results"))
    run = rf.run_dir(config)
    for name in ("metrics.json", rf.PER_IMAGE, "clip_benchmark.json"):
        (run / name).unlink()
    path = run / rf.CHECKPOINT
    state = torch.load(path, weights_only=True)  # the study's own checkpoint: no allowed types at all
    assert state["epoch"] == config.epochs
    state["config"] = config.to_dict()
    return config, state, path


def folder_stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_a_run_checkpoint_that_would_run_code_is_refused_on_resume(finished_runs, tmp_path):
    config, state, path = unfinished_copy(finished_runs, tmp_path)
    marker = tmp_path / "code-ran"
    state["extra"] = RunsCode(marker)
    torch.save(state, path)
    before = folder_stamps(path.parent)
    with pytest.raises(UnsafeWeightsError) as info:
        loop.train_run(config, progress=False)
    assert str(path) in str(info.value) and "resume=False" in str(info.value)
    assert not marker.exists() and folder_stamps(path.parent) == before
    assert loop.build_parser().parse_args(["--trust-pickled-weights", "true"]).trust_pickled_weights is True


def test_a_checkpoint_of_the_old_format_is_refused_naming_the_file(finished_runs, tmp_path):
    """Checkpoints written before weights-only loading held numpy's RNG state as np.random.get_state() (an
    ndarray) and numpy floats in the history: refused, naming the file, the type and the way on."""
    config, state, path = unfinished_copy(finished_runs, tmp_path)
    saved = state["rng"]["numpy"]
    state["rng"]["numpy"] = (saved["bit_generator"], saved["key"].numpy().astype(np.uint32), saved["pos"],
                             saved["has_gauss"], saved["cached_gaussian"])
    state["history"] = [{k: np.float64(v) if isinstance(v, float) else v for k, v in row.items()}
                        for row in state["history"]]
    torch.save(state, path)
    before = folder_stamps(path.parent)
    with pytest.raises(UnsafeWeightsError, match="numpy") as info:
        loop.train_run(config, progress=False)
    assert str(path) in str(info.value) and "resume=False" in str(info.value)
    assert folder_stamps(path.parent) == before  # nothing was trained or written
