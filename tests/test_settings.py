"""The settings stage: profiles (run and measuring settings in one dict each), seeds and the runs they give,
the parameters a user sets, comparing a saved configuration, the paper's reference, tower names, chapter
titles and paths, and the notebooks' parameters cells turned into configurations. No torch work: instant."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
import pytest

from mvlip_utils.settings import notebooks, params
from mvlip_utils.settings.encoders import tower_name
from mvlip_utils.settings.paper import paper_reference
from mvlip_utils.settings.profiles import (ENCODERS, PRECISIONS, PROFILES, RUN_IRRELEVANT, BenchSettings,
                                           StudyConfig, changed_parameters, get_bench_settings, get_config,
                                           help_text, user_fields)


# ------------------------------------------------------------------------------------ profiles
def test_every_profile_key_is_a_run_or_a_measuring_setting():
    names = {f.name for f in dataclasses.fields(StudyConfig)} | {f.name for f in dataclasses.fields(BenchSettings)}
    for profile, values in PROFILES.items():
        assert set(values) <= names, (profile, sorted(set(values) - names))
        assert "seed" not in values  # a profile lists seeds; a run's seed is set from them


def test_one_dict_per_profile_decides_both_the_run_and_the_measuring():
    speed, bench = get_config("speed"), get_bench_settings("speed")
    assert (speed.train_step, speed.precision, speed.model_size, speed.image_size) == (
        "graphed", "fp32-tf32conv", "paper", 224)
    assert bench.step_check_steps == ["eager", "graphed"] and bench.resolutions[0] == 224
    smoke = get_bench_settings("smoke")
    assert (smoke.warmup, smoke.step_check_images, smoke.step_check_deterministic) == (2, 96, True)
    assert get_bench_settings("smoke", warmup=7, resolutions=None).warmup == 7  # None: the profile's value
    with pytest.raises(ValueError, match="compile_timeout_s"):  # no such measuring setting any more
        get_bench_settings("smoke", compile_timeout_s=60)
    with pytest.raises(ValueError, match="step_check_steps"):
        get_bench_settings("smoke", step_check_steps=["fused", "eager"])
    with pytest.raises(ValueError, match="profile='huge'"):
        get_config("huge")


def test_the_paper_profile_is_the_papers_protocol():
    config, protocol = get_config("paper"), paper_reference()["protocol"]
    for key in ("epochs", "batch_size", "lr", "weight_decay", "grad_clip", "temperature", "image_size"):
        assert getattr(config, key) == protocol[key], key
    assert config.pretrained and config.model_size == "paper" and config.seeds == [0, 1, 2]


# --------------------------------------------------------------------------------------- seeds
def test_seeds_of_each_profile_and_one_config_per_seed():
    assert get_config("smoke").seeds == [0, 1, 2] and get_config("paper").seeds == [0, 1, 2]
    assert get_config("speed").seeds == [0]
    config = get_config("smoke", seeds=[3, 5], epochs=2)
    assert config.seed == 3  # the first seed until a run is asked for
    runs = config.runs()
    assert [r.seed for r in runs] == [3, 5]
    for run in runs:
        assert run.seeds == [3, 5] and run.epochs == 2
        assert {k: v for k, v in run.to_dict().items() if k != "seed"} == {
            k: v for k, v in config.to_dict().items() if k != "seed"}


@pytest.mark.parametrize("seeds", [[], [1, 1], [-1], [True], [0.5], "0", 0])
def test_bad_seeds_are_named(seeds):
    with pytest.raises(ValueError, match="seeds="):
        get_config("smoke", seeds=seeds)


def test_the_seed_is_internal_and_the_seeds_are_a_users():
    users = user_fields(StudyConfig)
    assert "seeds" in users and "seed" not in users
    assert params.parameter_names() == users
    assert [f.name for f in dataclasses.fields(StudyConfig) if f.name not in users] == ["seed"]
    cell = params.parameters_cell_source(notebooks.TRAIN)
    assert "\nseeds = None  # " in cell and "\nseed = " not in cell


def test_precisions_include_fp16_and_others_are_named():
    assert get_config("smoke", precision="fp16").precision == "fp16"
    assert "fp16" in PRECISIONS and get_bench_settings("smoke", sweep_precision="fp16").sweep_precision == "fp16"
    with pytest.raises(ValueError, match="precision='fp8'"):
        get_config("smoke", precision="fp8")
    with pytest.raises(ValueError, match="sweep_precision='fp8'"):
        get_bench_settings("smoke", sweep_precision="fp8")


# ------------------------------------------------------------------------ a saved configuration
def test_changed_parameters_compares_what_decides_a_run():
    config = get_config("smoke", encoder="vit", epochs=2)
    saved = config.to_dict()
    assert changed_parameters(saved, config) == {}
    # what does not change what a run computes is ignored, the seed list included; the run's own seed is not
    assert set(RUN_IRRELEVANT) >= {"device", "num_workers", "note", "data_cache", "seeds"}
    assert changed_parameters(saved, config.replace(device="cpu", num_workers=3, note="x", seeds=[0, 7])) == {}
    assert changed_parameters(saved, config.replace(seed=1)) == {"seed": (0, 1)}
    assert changed_parameters(saved, config.replace(epochs=3, lr=0.5)) == {"epochs": (2, 3), "lr": (1e-3, 0.5)}
    # a key the saved file lacks (a file written before the parameter existed) is None, never a default
    old = {k: v for k, v in saved.items() if k not in ("deterministic", "train_step")}
    assert changed_parameters(old, config) == {"deterministic": (None, False), "train_step": (None, "eager")}


# ----------------------------------------------------------------------------- the paper's numbers
def test_the_paper_reference_ships_with_the_package():
    ref = paper_reference()
    logs = ref["authors_logs"]
    assert isinstance(logs, pd.DataFrame) and set(logs.encoder) == {"mambavision", "swin"}
    for encoder in ("mambavision", "swin"):  # the logs' last epoch is Table 1
        last = logs[logs.encoder == encoder].sort_values("epoch").iloc[-1]
        assert last.epoch == ref["protocol"]["epochs"]
        assert last.accuracy == ref["table1_final_epoch"][encoder]["accuracy"]
    assert set(ENCODERS) <= set(ref["table2_throughput_images_per_s"])
    assert ref["table2_throughput_images_per_s"]["mambavision"] > ref["table2_throughput_images_per_s"]["vit"]


# ------------------------------------------------------------------------ names, titles, paths
def test_tower_names_at_each_size():
    assert [tower_name(e, "smoke") for e in ENCODERS] == ["tiny MambaVision", "tiny Swin", "tiny ViT"]
    assert [tower_name(e, "paper") for e in ENCODERS] == ["MambaVision-B-21K", "Swin-B", "ViT-B/32"]
    assert [tower_name(e) for e in ENCODERS] == [tower_name(e, "paper") for e in ENCODERS]
    assert tower_name("convnext_atto", "smoke") == tower_name("convnext_atto") == "convnext_atto"  # its own size


def test_every_chapter_title_is_unique_in_the_book():
    steps = [notebooks.Step(notebooks.FINDINGS)]
    for profile in PROFILES:
        steps += notebooks.plan([*ENCODERS, "convnext_atto"], profile)
    titles = [s.title for s in steps]
    assert len(set(titles)) == len(titles)
    assert notebooks.Step(notebooks.TRAIN, "mambavision", "smoke").title == (
        "MVLIP (tiny MambaVision): training, smoke edition")
    assert notebooks.Step(notebooks.BENCHMARK, "swin", "speed").title == "CLIP(Swin) (Swin-B): throughput, speed edition"
    assert notebooks.Step(notebooks.EVALUATE, "convnext_atto", "smoke").title == (
        "CLIP(convnext_atto) (convnext_atto): zero-shot evaluation, smoke edition")
    assert "speed edition" in notebooks.Step(notebooks.SETUP, None, "speed").title


def test_a_recorded_chapter_is_shown_from_its_copy_under_executed():
    book = Path("book")
    recorded = notebooks.Step(notebooks.TRAIN, "vit", "speed")
    assert recorded.output(book) == Path("book/recorded/speed/vit/02_train.ipynb")
    assert recorded.book_path(book) == Path("book/executed/speed/vit/02_train.ipynb")
    for step in (notebooks.Step(notebooks.TRAIN, "vit", "smoke"), notebooks.Step(notebooks.DISCUSSION, None, "speed"),
                 notebooks.Step(notebooks.FINDINGS), notebooks.Step(notebooks.SETUP, None, "smoke")):
        assert step.book_path(book) == step.output(book), step  # executed at build time: shown where written
    assert notebooks.Step(notebooks.SETUP, None, "paper").book_path(book) == Path("book/executed/paper/01_setup.ipynb")
    assert notebooks.edition_record_path(book, "speed") == Path("book/recorded/speed/edition.json")
    assert notebooks.edition_record_path(book, "smoke") == Path("book/executed/smoke/edition.json")


# ---------------------------------------------------------------------------- parameters cells
@pytest.mark.parametrize("notebook", notebooks.NOTEBOOKS)
def test_a_parameters_cell_as_written_gives_the_profiles_settings(notebook):
    """Every line of the cell is ``name = value  # its help``; run as it is, the cell gives the smoke profile's
    configuration and measuring settings (None: the profile's value)."""
    source = params.parameters_cell_source(notebook)
    namespace: dict = {}
    exec(source, namespace)
    run_fields = {f.name for f in dataclasses.fields(StudyConfig)}
    bench_fields = {f.name for f in dataclasses.fields(BenchSettings)}
    for line in (line for line in source.splitlines() if not line.startswith("#")):
        name, _, rest = line.partition(" = ")
        _, _, comment = rest.partition("  # ")
        if name in run_fields:
            assert comment == help_text(StudyConfig, name), name
        elif name in bench_fields:
            assert comment == help_text(BenchSettings, name), name
        else:
            assert comment, name
    if notebook == notebooks.FINDINGS:
        assert "profile" not in namespace and namespace["editions"] == ["smoke", "speed"]
        return
    fixed = {"encoder": "vit"} if notebook in notebooks.PER_ENCODER else {}
    assert ("encoder" in namespace) == (notebook in notebooks.PER_ENCODER)
    assert set(params.parameter_names()) - {"encoder"} <= set(namespace)
    assert params.config_from_parameters(namespace, **fixed) == get_config("smoke", **fixed)
    assert set(params.BENCH_FIELDS.get(notebook, ())) <= set(namespace)
    assert params.bench_from_parameters(namespace) == get_bench_settings("smoke")
    changed = dict(namespace, epochs=3, seeds=[4])
    config = params.config_from_parameters(changed, **fixed)
    assert (config.epochs, config.seeds, config.seed) == (3, [4], 4)
