"""Any timm image model as an encoder (issue 19), on the CPU with timm's tiny test models: names, folders and
labels; the tower and its projection; weights from a made local file, the environment variable and the Hugging
Face cache; the refusals and the training command line (in this process); 02_train through papermill; the discussion beside the
paper's towers, and findings that an extra encoder never changes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from mvlip_utils.report import tables
from mvlip_utils.settings import encoders, notebooks
from mvlip_utils.train import run_folder
from mvlip_utils.models import towers
from mvlip_utils.study.book import toc_text
from mvlip_utils.models.model import MVLIP, create_text_tower
from mvlip_utils.settings.profiles import ENCODER_LABELS, ENCODERS, get_config
from mvlip_utils.models.towers import WeightsUnavailableError, architecture, create_image_tower
from mvlip_utils.models.weights import UnsafeWeightsError

from conftest import ROOT

EXTRA = "test_convnext"  # timm's tiny ConvNeXt (0.2 M parameters), built for its tests


# ------------------------------------------------------------------------------------ names
def test_paper_encoders_keep_their_names_folders_and_labels():
    for encoder in ENCODERS:
        assert encoders.encoder_folder(encoder) == encoder
        assert ENCODER_LABELS[encoder] == {"mambavision": "MVLIP", "swin": "CLIP(Swin)", "vit": "CLIP(ViT)"}[encoder]
    assert list(ENCODER_LABELS) == list(ENCODERS) and "convnext_atto" not in ENCODER_LABELS  # iteration: the paper's
    assert ENCODER_LABELS["convnext_atto"] == "CLIP(convnext_atto)" == ENCODER_LABELS.get("convnext_atto")
    assert encoders.tower_name("convnext_base.fb_in22k_ft_in1k") == "convnext_base.fb_in22k_ft_in1k"
    assert tables.tower_label("convnext_atto") == "convnext_atto, beyond the paper"
    assert tables.tower_label("swin") == "Swin-B" and tables.tower_label("swin", "smoke") == "tiny Swin"


def test_two_models_never_share_a_folder():
    """Every timm name (architectures and pretrained tags, MambaVision's too) and the paper's towers get a
    lowercase [a-z0-9._-] folder, all different even on a case-insensitive disk (MambaVision's models are
    registered by importing the models stage)."""
    names = set(timm.list_models()) | set(timm.list_pretrained()) | set(ENCODERS)
    folders = {name: encoders.encoder_folder(name) for name in names}
    assert all(encoders._SAFE.fullmatch(f) for f in folders.values())
    assert len({f.lower() for f in folders.values()}) == len(names)
    assert folders["convnext_atto.d2_in1k"] == "convnext_atto.d2_in1k"
    assert folders["mamba_vision_T"].startswith("mamba_vision_t-") and folders["mamba_vision_T"] != "mamba_vision_t"
    config = get_config("smoke", encoder="mamba_vision_T", results_dir="r")
    assert run_folder.run_dir(config) == Path("r/smoke") / folders["mamba_vision_T"] / "seed-0"
    step = notebooks.Step(notebooks.TRAIN, "mamba_vision_T", "smoke")
    assert step.output(Path("book")).parent.name == folders["mamba_vision_T"]


def test_a_misspelt_or_unknown_name_is_refused_with_the_closest_timm_names():
    """timm's registry is the models stage's (towers.check_encoder, which the command lines, the study
    runner and the tower's creation call); the settings check only the name's form."""
    with pytest.raises(ValueError, match="closest timm names: convnext_atto"):
        towers.check_encoder("convnxt_atto")
    with pytest.raises(ValueError, match="closest timm names: convnext_atto"):
        create_image_tower("convnxt_atto", image_size=64)
    with pytest.raises(ValueError, match=r"no pretrained tag 'in99k'.*convnext_atto.d2_in1k"):
        towers.check_encoder("convnext_atto.in99k")
    with pytest.raises(ValueError, match="parameter encoder=''"):
        get_config("smoke", encoder="")
    assert towers.check_encoder("convnext_atto.d2_in1k") == "convnext_atto.d2_in1k"
    assert towers.check_encoder("mamba_vision_T") == "mamba_vision_T"  # registered by mambavision


# ------------------------------------------------------------------------------------ the tower
@pytest.mark.parametrize("name, features", [(EXTRA, 64), ("test_vit", 64), ("test_mambaout", 256)])
def test_the_tower_is_timm_without_its_classifier_and_a_new_512d_projection(name, features):
    """At the smoke profile's 64 px, at the model's own size; the projection's width is the pooled features'
    (test_mambaout's pre-logits layer widens 64 to 256); CLIP's image features are unit vectors."""
    torch.manual_seed(0)
    tower = create_image_tower(name, size="smoke", image_size=64)
    assert tower.proj.in_features == features and tower.proj.out_features == 512
    assert tower.backbone.num_classes == 0 and tower.timm_name == name
    reference = timm.create_model(name, num_classes=0, **({"img_size": 64} if name == "test_vit" else {}))
    assert sum(p.numel() for p in tower.backbone.parameters()) == sum(p.numel() for p in reference.parameters())
    if name == "test_vit":  # built for 64 px (timm's img_size), not its default 160
        assert tuple(tower.backbone.patch_embed.img_size) == (64, 64)
    model = MVLIP(tower, create_text_tower())
    features_out = model.encode_image(torch.randn(3, 3, 64, 64))
    assert features_out.shape == (3, 512)
    assert torch.allclose(features_out.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert architecture(name, "smoke", 64) == {"timm_name": name, "size": "own", "image_size": 64, "overrides": {}}


def test_a_model_that_cannot_take_the_image_size_stops_naming_the_size_it_needs():
    # Inception-v3 takes no img_size and its stem needs 75 px or more; its weights were made at 299 px
    with pytest.raises(ValueError, match=r"does not run at image_size=64 px \(it needs 299 px") as info:
        create_image_tower("inception_v3", size="smoke", image_size=64)
    assert len(str(info.value).splitlines()) == 1


def test_a_model_that_is_not_an_image_model_is_refused():
    @timm.models.register_model
    def mvlip_test_not_an_image_model(pretrained=False, **kwargs):
        return nn.Linear(8, 8)

    with pytest.raises(ValueError, match="is not an image model"):
        create_image_tower("mvlip_test_not_an_image_model", image_size=64)


# ------------------------------------------------------------------------------------ weights
def _state(name=EXTRA, seed=5):
    torch.manual_seed(seed)
    source = timm.create_model(name, num_classes=1000)
    return {k: v.clone().contiguous() for k, v in source.state_dict().items()}


def _holds(tower, state):
    mine = tower.backbone.state_dict()
    expected = {k: v for k, v in state.items() if not k.startswith("head.fc.")}
    assert set(expected) == set(mine)
    assert all(torch.equal(mine[k], v) for k, v in expected.items())


def test_weights_from_a_local_safetensors_or_pth_file_and_the_environment_variable(tmp_path, monkeypatch):
    state = _state()
    st, pth = tmp_path / "model.safetensors", tmp_path / "pytorch_model.bin"
    save_file(state, str(st))
    torch.save({"state_dict": state}, pth)
    _holds(create_image_tower(EXTRA, pretrained=True, weights_path=str(st), image_size=64), state)
    _holds(create_image_tower(EXTRA, pretrained=True, weights_path=str(pth), image_size=64), state)
    assert towers.weights_env("convnext_atto.d2_in1k") == "MVLIP_WEIGHTS_CONVNEXT_ATTO_D2_IN1K"
    monkeypatch.setenv(towers.weights_env(EXTRA), str(st))
    tower = create_image_tower(EXTRA, pretrained=True, image_size=64)
    _holds(tower, state)
    assert tower.backbone.pretrained_cfg["file"] == str(st) and "state_dict" not in tower.backbone.pretrained_cfg
    # pretrained=False ignores the variable: random weights, different from the file's
    random = create_image_tower(EXTRA, pretrained=False, image_size=64)
    assert not torch.equal(random.backbone.stem[0].weight, state["stem.0.weight"])


class Payload:  # a type a weights file must not need
    pass


def test_a_weights_file_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": _state(), "extra": Payload()}, path)
    with pytest.raises(UnsafeWeightsError, match="Payload"):
        create_image_tower(EXTRA, pretrained=True, weights_path=str(path), image_size=64)


def _hf_cache(root: Path, repo: str, filename: str, state) -> Path:
    """A Hugging Face hub cache holding ``filename`` of ``repo`` (the layout huggingface_hub writes)."""
    folder = root / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)
    save_file(state, str(snapshot / filename))
    return snapshot / filename


def test_pretrained_weights_from_the_hub_cache_offline_or_an_error_naming_where_it_looked(tmp_path, monkeypatch):
    from huggingface_hub import constants

    name = "test_convnext.r160_in1k"
    repo = timm.models.get_pretrained_cfg(name).hf_hub_id
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsUnavailableError) as info:
        create_image_tower(name, pretrained=True, image_size=64)
    text = str(info.value)
    for part in (f"encoder={name!r}", "MVLIP_WEIGHTS_TEST_CONVNEXT_R160_IN1K", repo, str(tmp_path / "hub"),
                 "image_weights=", "pretrained=False"):
        assert part in text, part
    state = _state()
    path = _hf_cache(tmp_path / "hub", repo, "model.safetensors", state)
    found, _ = towers.find_weights(name)
    assert Path(found) == path
    _holds(create_image_tower(name, pretrained=True, image_size=64), state)


# ------------------------------------------------------------------------------------ command lines
def _cli(args, capsys, monkeypatch, expect_rc):
    """``python -m <module> <args>`` in this process (``tests/test_cli.py`` runs the entry point itself)."""
    from mvlip_utils.study.runner import main as study_main
    from mvlip_utils.train.loop import main as train_main

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    module, *rest = args
    code = {"mvlip_utils.train": train_main, "mvlip_utils.study": study_main}[module](rest)
    out = capsys.readouterr()
    assert code == expect_rc, out.err[-3000:]
    return out


TINY = ["--generated-classes", "4", "--generated-train-per-class", "8", "--generated-val-per-class", "2",
        "--batch-size", "8", "--epochs", "1", "--seeds", "0"]


def test_the_refusals_are_one_error_line(tmp_path, capsys, monkeypatch):
    for args, named in ((["mvlip_utils.train", "--encoder", "convnxt_atto"], "closest timm names: convnext_atto"),
                        (["mvlip_utils.study", "--encoders", "swin", "convnxt_atto", "--no-book"],
                         "closest timm names: convnext_atto"),
                        (["mvlip_utils.train", "--encoder", "inception_v3", "--data-dir", str(tmp_path / "d"),
                          "--results-dir", str(tmp_path / "r"), *TINY], "it needs 299 px")):
        stderr = _cli(args, capsys, monkeypatch, 2).err
        lines = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and named in lines[0] and "Traceback" not in stderr, stderr[-2000:]


def test_the_training_command_line_trains_an_extra_encoder(tmp_path, capsys, monkeypatch):
    out = _cli(["mvlip_utils.train", "--encoder", EXTRA, "--quiet", "--data-dir", str(tmp_path / "d"),
                "--results-dir", str(tmp_path / "r"), *TINY], capsys, monkeypatch, 0).out
    run = tmp_path / "r" / "smoke" / EXTRA / "seed-0"
    assert f"run folder: {run}" in out
    saved = json.loads((run / "config.json").read_text())
    assert saved["encoder"] == EXTRA and saved["parameters"]["image_tower"]["total"] > 0
    assert len(pd.read_csv(run / "history.csv")) == 1 and (run / "metrics.json").is_file()


def test_02_train_runs_an_extra_encoder_through_papermill(tmp_path):
    import nbformat
    import papermill

    from mvlip_utils.study.runner import kernel_for_this_python

    out = tmp_path / "02_train.ipynb"
    papermill.execute_notebook(
        str(ROOT / "notebooks" / "02_train.ipynb"), str(out), kernel_name=kernel_for_this_python(), cwd=str(ROOT),
        progress_bar=False, parameters=dict(profile="smoke", encoder=EXTRA, epochs=1, generated_classes=4,
                                            generated_train_per_class=8, generated_val_per_class=2, batch_size=8,
                                            results_dir=str(tmp_path / "r"), data_dir=str(tmp_path / "d"),
                                            step_check_images=16, step_check_steps=["eager"], step_profile_steps=0,
                                            step_check_deterministic=False,
                                            seeds=[0]))
    text = "\n".join(o.get("text", "") + json.dumps(o.get("data", {})) for c in nbformat.read(out, 4).cells
                     for o in c.get("outputs", []))
    assert f"CLIP({EXTRA})" in text
    assert len(pd.read_csv(tmp_path / "r" / "smoke" / EXTRA / "seed-0" / "history.csv")) == 1
    assert (tmp_path / "r" / "smoke" / EXTRA / "step_check.json").is_file()


# ------------------------------------------------------------------------------------ the book
def test_the_book_names_an_extra_encoders_chapters_as_beyond_the_paper():
    toc = toc_text({"smoke": ["mambavision", EXTRA]})
    assert f"book/executed/smoke/{EXTRA}/02_train" in toc
    assert f"CLIP({EXTRA}) ({EXTRA}): training, smoke edition" in toc
