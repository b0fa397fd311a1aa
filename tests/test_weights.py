"""Pretrained weights from local files, in each real format, through the code path a user's run takes.

No weights can be downloaded here, so each test writes a checkpoint in the format its source publishes
(random tensors, paper-size architecture), loads it through ``create_image_tower(..., pretrained=True,
weights_path=...)`` / the environment variables / ``create_text_tower(pretrained=True, weights_path=...)``
(what ``experiment.build_experiment`` calls with ``config.image_weights`` / ``config.text_weights``), and checks
that every tensor arrives unchanged, that the file's classifier is dropped and that the 512-d projection
is new. The OpenAI CLIP files are also checked functionally: the loaded towers must compute what
open_clip's own OpenAI-architecture model (QuickGELU) computes from the same file.
All files live in pytest's tmp_path; each encoder's paper-size path is exercised once or twice (~75 s in all).

No file runs code when it is loaded: a planted pickle that would create a marker file when unpickled in full
is refused by every entry point (image and text weights, a run checkpoint on resume), with one error that
names the file; a file that needs a type beyond the allowed ones loads only with the explicit opt-in.
"""

import argparse
from pathlib import Path

import numpy as np
import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file

from mvlip_utils.train import results, run_folder, loop as train
from mvlip_utils.models.model import TEXT_WEIGHTS_ENV, create_text_tower
from mvlip_utils.settings.profiles import get_config
from mvlip_utils.models.towers import TIMM_NAMES, WEIGHTS_ENV, create_image_tower
from mvlip_utils.models.weights import TRUST_ENV, UnsafeWeightsError, load_torch_file, read_state_dict


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


def test_mambavision_release_pth_tar_loads_without_its_classifier(tmp_path):
    """NVlabs' MambaVision-B-21K release: a .pth.tar written by timm's train.py (CheckpointSaver): the
    'state_dict' with a 1000-class head, and 'epoch', 'arch', 'optimizer', 'version', 'metric' and 'args',
    the training script's argparse.Namespace, the one type beyond tensors and plain values it needs."""
    torch.manual_seed(1)
    source = timm.create_model(TIMM_NAMES["mambavision"], num_classes=1000)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    assert {"head.weight", "head.bias"} <= set(state)
    path = tmp_path / "mambavision_base_21k.pth.tar"
    optimizer = torch.optim.AdamW(source.parameters(), lr=5e-4, weight_decay=0.05)  # its state left empty (size)
    args = argparse.Namespace(model="mamba_vision_B_21k", lr=5e-4, epochs=300, opt="adamw", opt_betas=[0.9, 0.999],
                              input_size=[3, 224, 224], mean=None, amp=True, device="cuda:0", drop_path=0.5)
    torch.save({"epoch": 300, "arch": "mamba_vision_B_21k", "state_dict": state,
                "optimizer": optimizer.state_dict(), "version": 2, "args": args, "metric": 84.2}, path)
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == ["argparse.Namespace"]
    del source, optimizer

    torch.manual_seed(2)
    tower = create_image_tower("mambavision", size="paper", pretrained=True, weights_path=str(path))
    assert_backbone_holds(tower, {k: v for k, v in state.items() if not k.startswith("head.")})
    assert_new_head(tower, state.values())
    # a checkpoint that does not fit is refused, naming the file
    broken = tmp_path / "broken.pth.tar"
    torch.save({"state_dict": {k: v for k, v in state.items() if not k.startswith("levels.0.")}}, broken)
    with pytest.raises(ValueError, match="broken.pth.tar"):
        from mvlip_utils.models.towers import _load_mambavision_weights

        _load_mambavision_weights(tower.backbone, str(broken))
    # a file that needs a type beyond the release's (here a numpy number, as many training scripts store) is
    # refused, naming the file and the type; with the explicit opt-in, for a file one trusts, it loads
    elsewhere = tmp_path / "trained_elsewhere.pth.tar"
    torch.save({"state_dict": state, "best_acc1": np.float64(84.2)}, elsewhere)
    with pytest.raises(UnsafeWeightsError, match="numpy") as info:
        _load_mambavision_weights(tower.backbone, str(elsewhere))
    assert str(elsewhere) in str(info.value)
    del tower
    trusted = create_image_tower("mambavision", size="paper", pretrained=True, weights_path=str(elsewhere),
                                 trust_pickled_weights=True)
    assert_backbone_holds(trusted, {k: v for k, v in state.items() if not k.startswith("head.")})


def test_timm_swin_pth_and_safetensors_load_and_drop_head_fc(tmp_path, monkeypatch):
    """timm's Swin-B files (pytorch_model.bin / model.safetensors: a timm state dict with head.fc.*),
    once through weights_path and once through the environment variable."""
    torch.manual_seed(3)
    source = timm.create_model("swin_base_patch4_window7_224", num_classes=1000)
    state = {k: v.clone().contiguous() for k, v in source.state_dict().items()}
    del source
    assert {"head.fc.weight", "head.fc.bias"} <= set(state)
    expected = {k: v for k, v in state.items() if not k.startswith("head.fc.")}
    pth, st = tmp_path / "pytorch_model.pth", tmp_path / "model.safetensors"
    torch.save(state, pth)
    save_file(state, str(st))

    tower = create_image_tower("swin", size="paper", pretrained=True, weights_path=str(pth))
    assert_backbone_holds(tower, expected)
    assert_new_head(tower, state.values())
    # the file was read here and handed to timm as tensors; the model's config records the file, not a copy
    assert tower.backbone.pretrained_cfg["file"] == str(pth) and "state_dict" not in tower.backbone.pretrained_cfg
    del tower

    monkeypatch.setenv(WEIGHTS_ENV["swin"], str(st))
    tower = create_image_tower("swin", size="paper", pretrained=True)  # no weights_path: the env var
    assert_backbone_holds(tower, expected)
    assert_new_head(tower, state.values())


@pytest.fixture(scope="module")
def openai_clip_file(tmp_path_factory):
    """An open_clip ViT-B-32 state dict in the OpenAI architecture (QuickGELU), as
    open_clip_pytorch_model.bin holds it (keys visual.*, transformer.*, token_embedding, ...)."""
    torch.manual_seed(4)
    reference = open_clip.create_model("ViT-B-32-quickgelu").eval()
    path = tmp_path_factory.mktemp("clip") / "open_clip_pytorch_model.bin"
    torch.save(reference.state_dict(), path)
    return path, reference


def test_clip_vit_b32_image_tower_loads_from_an_open_clip_file(openai_clip_file, monkeypatch):
    path, reference = openai_clip_file
    state = reference.state_dict()
    monkeypatch.setenv(WEIGHTS_ENV["vit"], str(path))
    tower = create_image_tower("vit", size="paper", pretrained=True).eval()  # through MVLIP_VIT_WEIGHTS
    backbone = tower.backbone.state_dict()
    # timm's checkpoint filter renames OpenAI's keys; the tensors arrive unchanged
    pairs = {"patch_embed.proj.weight": state["visual.conv1.weight"],
             "cls_token": state["visual.class_embedding"].reshape(1, 1, -1),
             "pos_embed": state["visual.positional_embedding"].unsqueeze(0),
             "norm_pre.weight": state["visual.ln_pre.weight"],
             "blocks.0.attn.qkv.weight": state["visual.transformer.resblocks.0.attn.in_proj_weight"],
             "blocks.11.mlp.fc2.bias": state["visual.transformer.resblocks.11.mlp.c_proj.bias"],
             "norm.weight": state["visual.ln_post.weight"]}
    for key, value in pairs.items():
        assert torch.equal(backbone[key], value), key
    visual = {k for k in state if k.startswith("visual.")}
    assert len(backbone) == len(visual) - 1  # every visual tensor but the projection (the file's head)
    assert_new_head(tower, [state["visual.proj"].t()])
    # and it computes what CLIP's own image tower computes (features before CLIP's projection)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = tower.backbone(images) @ state["visual.proj"]
        theirs = reference.visual(images)
    assert torch.allclose(ours, theirs, atol=1e-4), (ours - theirs).abs().max()


def test_clip_text_tower_loads_an_open_clip_file(openai_clip_file, monkeypatch):
    path, reference = openai_clip_file
    state = reference.state_dict()
    text = create_text_tower(pretrained=True, weights_path=str(path))
    for key, value in text.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert {"text_projection", "token_embedding.weight", "transformer.resblocks.11.mlp.c_fc.weight"} <= \
        set(text.state_dict())
    tokens = text.tokenizer(["a photo of a tench", "this is a goldfish"])
    with torch.no_grad():
        assert torch.allclose(text.encode_text(tokens), reference.encode_text(tokens), atol=1e-4)
    monkeypatch.setenv(TEXT_WEIGHTS_ENV, str(path))
    again = create_text_tower(pretrained=True)  # through MVLIP_TEXT_WEIGHTS
    assert torch.equal(again.text_projection, state["text_projection"])
    monkeypatch.setenv(TEXT_WEIGHTS_ENV, str(path.parent / "missing.bin"))
    with pytest.raises(FileNotFoundError, match="text_weights="):
        create_text_tower(pretrained=True)


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
    with pytest.raises(UnsafeWeightsError) as info:
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


def small_run(tmp_path, **overrides):
    return get_config("smoke", encoder="vit", epochs=2, generated_classes=4, generated_train_per_class=16,
                      generated_val_per_class=4, batch_size=16, image_size=32, device="cpu",
                      data_dir=str(tmp_path / "data"), results_dir=str(tmp_path / "results"), **overrides)


def test_a_run_checkpoint_that_would_run_code_is_refused_on_resume(tmp_path):
    config = small_run(tmp_path)
    train.train_run(config, progress=False, stop_after_epoch=1)
    path = results.run_dir(config) / run_folder.CHECKPOINT
    state = torch.load(path, weights_only=True)  # the study's own checkpoint: no allowed types at all
    marker = tmp_path / "code-ran"
    state["extra"] = RunsCode(marker)
    torch.save(state, path)
    with pytest.raises(UnsafeWeightsError) as info:
        train.train_run(config, progress=False)
    assert str(path) in str(info.value) and "resume=False" in str(info.value)
    assert not marker.exists()


def test_a_checkpoint_of_the_old_format_resumes_only_with_the_opt_in(tmp_path):
    """Checkpoints written before weights-only loading held numpy's RNG state as np.random.get_state() (an
    ndarray): refused by default; with trust_pickled_weights the run resumes from it."""
    config = small_run(tmp_path)
    train.train_run(config, progress=False, stop_after_epoch=1)
    path = results.run_dir(config) / run_folder.CHECKPOINT
    state = torch.load(path, weights_only=True)
    saved = state["rng"]["numpy"]
    state["rng"]["numpy"] = (saved["bit_generator"], saved["key"].numpy().astype(np.uint32), saved["pos"],
                             saved["has_gauss"], saved["cached_gaussian"])
    state["history"] = [{k: np.float64(v) if isinstance(v, float) else v for k, v in row.items()}
                        for row in state["history"]]
    torch.save(state, path)
    with pytest.raises(UnsafeWeightsError, match="numpy") as info:
        train.train_run(config, progress=False)
    assert str(path) in str(info.value)
    history = train.train_run(config.replace(trust_pickled_weights=True), progress=False)  # run-irrelevant
    assert list(history.epoch) == [1, 2]
    assert history.train_loss.iloc[0] == state["history"][0]["train_loss"]
    assert torch.load(path, weights_only=True)["epoch"] == 2  # and it is written in the new format
    assert train.build_parser().parse_args(["--trust-pickled-weights", "true"]).trust_pickled_weights is True
