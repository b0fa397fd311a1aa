"""Pretrained weights from local files, in each real format, through the code path a user's run takes.

No weights can be downloaded here, so each test writes a checkpoint in the format its source publishes
(random tensors, paper-size architecture), loads it through ``create_image_tower(..., pretrained=True,
weights_path=...)`` / the environment variables / ``create_text_tower(pretrained=True, weights_path=...)``
(what ``train.build_experiment`` calls with ``config.image_weights`` / ``config.text_weights``), and checks
that every tensor arrives unchanged, that the file's classifier is dropped and that the 512-d projection
is new. The OpenAI CLIP files are also checked functionally: the loaded towers must compute what
open_clip's own OpenAI-architecture model (QuickGELU) computes from the same file.
All files live in pytest's tmp_path; each encoder's paper-size path is exercised once (~40 s in all).
"""

import open_clip
import pytest
import timm
import torch
from safetensors.torch import save_file

from mvlip_utils.model import TEXT_WEIGHTS_ENV, create_text_tower
from mvlip_utils.towers import TIMM_NAMES, WEIGHTS_ENV, create_image_tower


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
    """NVlabs' MambaVision-B-21K release: a .pth.tar holding {'state_dict': ...} with a 1000-class head."""
    torch.manual_seed(1)
    source = timm.create_model(TIMM_NAMES["mambavision"], num_classes=1000)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    assert {"head.weight", "head.bias"} <= set(state)
    path = tmp_path / "mambavision_base_21k.pth.tar"
    torch.save({"state_dict": state, "epoch": 300, "arch": "mamba_vision_B_21k"}, path)
    del source

    torch.manual_seed(2)
    tower = create_image_tower("mambavision", size="paper", pretrained=True, weights_path=str(path))
    assert_backbone_holds(tower, {k: v for k, v in state.items() if not k.startswith("head.")})
    assert_new_head(tower, state.values())
    # a checkpoint that does not fit is refused, naming the file
    broken = tmp_path / "broken.pth.tar"
    torch.save({"state_dict": {k: v for k, v in state.items() if not k.startswith("levels.0.")}}, broken)
    with pytest.raises(ValueError, match="broken.pth.tar"):
        from mvlip_utils.towers import _load_mambavision_weights

        _load_mambavision_weights(tower.backbone, str(broken))


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
