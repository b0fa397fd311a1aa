"""Image towers, the text tower, the prompt cache and the CLIP assembly.

Where a test needs a paper-size model's structure but not its weights (parameter counts, errors raised before
any weight is used), the model is built inside ``uninitialised_parameters()``: the same code, its parameters
left as allocated instead of filled by their initialisations, a few tenths of a second instead of seconds.
The loaded paper-size towers' training step at 224 px is test_weights'.
"""

import math

import open_clip
import pytest
import torch
from conftest import uninitialised_parameters

from mvlip_utils.data.folders import TEMPLATES
from mvlip_utils.models.model import MVLIP, PromptBank, create_text_tower
from mvlip_utils.models.towers import (OWN_PROJECTION, TIMM_NAMES, WeightsUnavailableError, architecture,
                                       count_parameters, create_image_tower)

# Parameter counts with the 512-d projection (timm 1.0.31, mambavision 1.2.0)
PAPER_PARAMS_M = {"mambavision": 97.2, "swin": 87.3, "vit": 87.8}
FEATURES = {"mambavision": 1024, "swin": 1024, "vit": 768}


@pytest.fixture(scope="module")
def text_tower():
    torch.manual_seed(0)
    return create_text_tower(pretrained=False)


@pytest.mark.parametrize("encoder", ["mambavision", "swin", "vit"])
def test_paper_size_towers_have_the_papers_parameter_counts_and_projection(encoder):
    with uninitialised_parameters():
        tower = create_image_tower(encoder, size="paper")
    assert tower.timm_name == TIMM_NAMES[encoder]
    params = count_parameters(tower)
    assert params["total"] / 1e6 == pytest.approx(PAPER_PARAMS_M[encoder], abs=0.05)
    assert params["trainable"] == params["total"]
    if encoder == "vit":  # CLIP's own visual projection (timm's head), no new one
        assert isinstance(tower.proj, torch.nn.Identity)
        head = tower.backbone.head
        assert (head.in_features, head.out_features) == (768, 512)
    else:  # a new projection after the pooled features
        assert tower.proj.out_features == 512 and tower.proj.in_features == FEATURES[encoder]
        assert tower.backbone.num_classes == 0
    assert architecture(encoder, "paper")["own_projection"] is (encoder in OWN_PROJECTION)


@pytest.mark.parametrize("encoder", ["mambavision", "swin", "vit"])
def test_smoke_towers_are_small_members_of_the_same_family(encoder):
    tower = create_image_tower(encoder, size="smoke", image_size=64)
    family = {"mambavision": "MambaVision", "swin": "SwinTransformer", "vit": "VisionTransformer"}[encoder]
    assert type(tower.backbone).__name__ == family
    assert count_parameters(tower)["total"] < 3e6
    assert tower(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    own = encoder in OWN_PROJECTION
    assert isinstance(tower.proj, torch.nn.Identity) == own == (encoder == "vit")
    assert architecture(encoder, "smoke", 64)["own_projection"] is own
    if own:  # the family's own head projects to the embedding at the smoke size too
        assert tower.backbone.head.out_features == 512


def test_unknown_encoder_and_size_are_named():
    with pytest.raises(ValueError, match="encoder='resnet'"):
        create_image_tower("resnet")
    with pytest.raises(ValueError, match="size='huge'"):
        create_image_tower("vit", size="huge")


@pytest.mark.parametrize("encoder", ["mambavision", "swin", "vit"])
def test_pretrained_unavailable_offline_is_a_clear_error_never_random_weights(encoder, monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as on a machine with no network
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("network is unreachable")))
    monkeypatch.setattr("mvlip_utils.models.towers.Path.is_file",
                        lambda self: False if str(self).startswith("/tmp/mamba_vision") else self.exists())
    with pytest.raises(WeightsUnavailableError) as info, uninitialised_parameters():
        create_image_tower(encoder, size="paper", pretrained=True)
    message = str(info.value)
    assert encoder in message and "pretrained=False" in message and "Looked in" in message


def test_missing_local_weights_file_names_the_parameter(tmp_path):
    with pytest.raises(FileNotFoundError, match="image_weights="):
        create_image_tower("swin", pretrained=True, weights_path=str(tmp_path / "nope.pth"))


def test_text_tower_is_open_clips_vit_b32_text_part(text_tower):
    with uninitialised_parameters():  # its text part is loaded from the tower below, its image part unused
        reference = open_clip.create_model("ViT-B-32")
    reference.load_state_dict({**reference.state_dict(),
                               **{k: v for k, v in text_tower.state_dict().items()}}, strict=False)
    tokens = text_tower.tokenizer(["a photo of a red circle", "this is a blue square"])
    assert torch.allclose(text_tower.encode_text(tokens), reference.encode_text(tokens), atol=1e-6)
    assert sum(p.numel() for p in text_tower.parameters()) / 1e6 == pytest.approx(63.4, abs=0.5)


def test_prompt_bank_equals_a_fresh_forward_pass_and_open_clips_classifier(text_tower):
    classnames, templates = ["red circle", "blue square"], TEMPLATES[1:3]
    bank = PromptBank(text_tower, classnames, templates, progress=False)
    assert bank.features.shape == (2, 2, 512)
    assert bank.prompts == [t.format(c) for c in classnames for t in templates]
    for c, t in [(0, 0), (1, 1)]:
        fresh = text_tower.encode_text(text_tower.tokenizer([templates[t].format(classnames[c])]), normalize=True)
        assert torch.allclose(bank.features[c, t], fresh[0], atol=1e-6)
    direct = open_clip.build_zero_shot_classifier(text_tower, text_tower.tokenizer, classnames, templates,
                                                  num_classes_per_batch=None)
    assert torch.allclose(bank.classifier, direct, atol=1e-6)
    labels, chosen = torch.tensor([1, 0, 1]), torch.tensor([1, 1, 0])
    assert torch.equal(bank.caption_features(labels, chosen), bank.features[labels, chosen])
    assert bank.captions(labels, chosen) == [templates[1].format("blue square"), templates[1].format("red circle"),
                                             templates[0].format("blue square")]

    class Refuses:  # a text tower that must not be called: the features come from the cache
        def __getattr__(self, name):
            raise AssertionError(f"the text tower was used ({name})")

    cached = PromptBank(Refuses(), classnames, templates, progress=False,
                        features=bank.features.reshape(len(bank.prompts), -1).clone())
    assert torch.equal(cached.features, bank.features) and torch.equal(cached.classifier, bank.classifier)
    assert cached.prompts == bank.prompts


def test_mvlip_freezes_the_text_tower_and_fixes_the_temperature(text_tower):
    model = MVLIP(create_image_tower("vit", size="smoke", image_size=64), text_tower)
    assert all(not p.requires_grad for p in model.text.parameters())
    assert not model.logit_scale.requires_grad
    assert model.logit_scale.exp().item() == pytest.approx(1 / 0.07)
    model.train()
    assert not model.text.training and model.visual.training
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in model.visual.parameters()}
    features = model.encode_image(torch.randn(3, 3, 64, 64))
    assert torch.allclose(features.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_mvlip_options_learn_temperature_and_unfreeze_text():
    with uninitialised_parameters():  # a fresh text tower whose weights are not used
        text = create_text_tower()
    model = MVLIP(create_image_tower("vit", size="smoke", image_size=64), text,
                  temperature=0.05, learn_temperature=True, train_text=True)
    assert model.logit_scale.requires_grad and math.isclose(model.logit_scale.item(), math.log(20), rel_tol=1e-6)
    assert all(p.requires_grad for p in model.text.parameters())
    model.train()
    assert model.text.training
