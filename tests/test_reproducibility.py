"""The ``deterministic`` parameter (settings/reproducibility.py): the settings it makes and restores, an
operation without a deterministic implementation named, the parameter in every entry point and in the run's
saved configuration (a run of the other value refused), a deterministic run on the CPU, and the step check's
comparison of the fused step with the eager one and its deterministic timing. The GPU side is
tests/test_gpu_tier.py; an exact resume is tests/test_checkpoint.py's."""

import os

import pandas as pd
import pytest
import torch

from mvlip_utils.data.files import read_json
from mvlip_utils.measure import benchmark_suite
from mvlip_utils.models.towers import architecture
from mvlip_utils.report import tables
from mvlip_utils.settings import notebooks, params, profiles, reproducibility as repro
from mvlip_utils.settings.profiles import PROFILES, get_config
from mvlip_utils.study import runner as study
from mvlip_utils.train import loop as train, run_folder as rf


@pytest.fixture
def clean_settings(monkeypatch):
    """PyTorch's defaults before and after each test (a failing test leaves nothing behind)."""
    monkeypatch.delenv(repro.CUBLAS_ENV, raising=False)
    before = repro.current_settings()
    yield before
    repro.apply_settings(before)


# ----------------------------------------------------------------------------------------- settings
def test_deterministic_mode_sets_every_setting_and_restores_the_previous_ones(clean_settings):
    assert clean_settings["use_deterministic_algorithms"] is False and clean_settings[repro.CUBLAS_ENV] is None
    with repro.deterministic_mode(True) as changed:
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic is True and torch.backends.cudnn.benchmark is False
        assert os.environ[repro.CUBLAS_ENV] == ":4096:8"
        import torch._inductor.config as inductor

        if hasattr(inductor, "deterministic"):
            assert inductor.deterministic is True
        assert inductor.max_autotune is False and inductor.coordinate_descent_tuning is False
        assert changed["use_deterministic_algorithms"] is False and changed[repro.CUBLAS_ENV] is None
        assert repro.current_settings() == repro.deterministic_settings()
    assert repro.current_settings() == clean_settings
    assert repro.CUBLAS_ENV not in os.environ


def test_deterministic_false_changes_nothing(clean_settings):
    torch.backends.cudnn.benchmark = True  # whatever the process had stays as it is
    with repro.deterministic_mode(False) as changed:
        assert changed == {} and not torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.benchmark is True and repro.CUBLAS_ENV not in os.environ


def test_prepare_environment_keeps_a_deterministic_cublas_value_and_replaces_any_other(monkeypatch):
    monkeypatch.setenv(repro.CUBLAS_ENV, ":16:8")
    assert repro.prepare_environment(True) == ":16:8" and os.environ[repro.CUBLAS_ENV] == ":16:8"
    monkeypatch.setenv(repro.CUBLAS_ENV, ":0:0")
    repro.prepare_environment(True)
    assert os.environ[repro.CUBLAS_ENV] == ":4096:8"
    monkeypatch.delenv(repro.CUBLAS_ENV)
    assert repro.prepare_environment(False) is None and repro.CUBLAS_ENV not in os.environ


def test_an_operation_without_a_deterministic_implementation_is_named_with_the_way_on(clean_settings):
    # put_ without accumulation has no deterministic implementation on any device
    with pytest.raises(repro.NondeterministicOperationError) as info:
        with repro.deterministic_mode(True):
            torch.zeros(3).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))
    assert info.value.operation == "put_" and "put_" in str(info.value)
    assert "deterministic=False" in str(info.value) and "--deterministic false" in str(info.value)
    assert isinstance(info.value, ValueError)  # a user error: the command lines print one line
    assert repro.current_settings() == clean_settings
    # the same call outside the mode, or any other error inside it, is left alone
    torch.zeros(3).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]))
    with pytest.raises(RuntimeError, match="other") as other:
        with repro.deterministic_mode(True):
            raise RuntimeError("some other failure")
    assert not isinstance(other.value, repro.NondeterministicOperationError)
    # PyTorch's other wordings: cuBLAS without its workspace setting, memory-efficient attention's key splits
    assert "cuBLAS" in repro.nondeterministic_operation(RuntimeError(
        "Deterministic behavior was enabled ... but this operation is not deterministic because it uses CuBLAS"))
    assert "attention" in repro.nondeterministic_operation(RuntimeError(
        "Using `num_splits_key > 1` makes the algorithm non-deterministic"))


# ------------------------------------------------------------------------------ the parameter itself
def test_deterministic_is_a_run_parameter_off_in_every_profile_in_every_entry_point():
    assert all(get_config(name).deterministic is False for name in PROFILES)
    assert "deterministic" in params.parameter_names()
    assert "deterministic" not in profiles.RUN_IRRELEVANT
    assert "deterministic = None" in params.parameters_cell_source(notebooks.TRAIN)
    args = train.build_parser().parse_args(["--deterministic", "true"])
    assert args.deterministic is True
    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["--deterministic", "maybe"])
    overrides = study.parse_overrides(["deterministic=true"])
    assert overrides == {"deterministic": True}
    study.check_overrides("smoke", ["vit"], overrides)
    # the notebooks' parameters: the config and, before any cuBLAS call, the environment
    os.environ.pop(repro.CUBLAS_ENV, None)
    try:
        config = params.config_from_parameters({"profile": "smoke", "deterministic": True}, encoder="vit")
        assert config.deterministic is True and os.environ[repro.CUBLAS_ENV] == ":4096:8"
    finally:
        os.environ.pop(repro.CUBLAS_ENV, None)


def test_the_test_profile_needs_a_gpu_but_its_edition_is_never_recorded():
    assert profiles.needs_cuda("cuda-smoke") and not profiles.records_edition("cuda-smoke")
    assert profiles.records_edition("speed") and profiles.records_edition("paper") and not profiles.records_edition("smoke")
    from pathlib import Path

    step = notebooks.Step(notebooks.TRAIN, "vit", "cuda-smoke")
    assert step.output(Path("book")) == Path("book/executed/cuda-smoke/vit/02_train.ipynb")
    config = get_config("cuda-smoke")
    assert (config.model_size, config.device, config.data, config.deterministic) == ("smoke", "cuda", "generated", False)
    bench = profiles.get_bench_settings("cuda-smoke")
    assert bench.step_check_steps == ["eager", "fused", "compiled", "graphed"] and bench.step_check_deterministic


# ------------------------------------------------------------------------- runs that repeat exactly
def test_a_deterministic_run_restores_the_settings_records_the_mode_and_refuses_the_other(finished_runs, tmp_path,
                                                                                        clean_settings):
    """On the CPU deterministic mode picks the kernels the default mode runs: the deterministic run of seed 0
    is bit for bit the finished runs' seed 0 (trained in the default mode)."""
    config = finished_runs["config"].replace(seed=0, deterministic=True, results_dir=str(tmp_path / "results"))
    history = train.train_run(config, progress=False)
    assert repro.current_settings() == clean_settings  # restored after the run
    run = rf.run_dir(config)
    assert rf.load_config(run)["deterministic"] is True
    assert torch.load(run / rf.CHECKPOINT, weights_only=True)["config"]["deterministic"] is True
    whole = rf.run_dir(finished_runs["config"].replace(seed=0))
    pd.testing.assert_frame_equal(history, rf.load_history(whole), check_exact=True)
    timing = {"eval_images_per_s"}
    metrics = [{k: v for k, v in rf.load_metrics(r).items() if k not in timing} for r in (run, whole)]
    assert repr(metrics[0]) == repr(metrics[1])  # NaN (top-5 with 4 classes) compares by its text
    # a finished run of the other mode is not loaded as this one, either way
    tower = architecture("vit", "smoke", 32)
    with pytest.raises(rf.RunMismatchError, match=r"deterministic True \(saved\) vs False \(now\)"):
        rf.finished_run_history(config.replace(deterministic=False), tower)
    with pytest.raises(rf.RunMismatchError, match=r"deterministic False \(saved\) vs True \(now\)"):
        train.train_run(finished_runs["config"].replace(seed=0, deterministic=True), progress=False)


def test_the_step_check_compares_the_fused_step_and_times_the_runs_step_in_deterministic_mode(finished_runs,
                                                                                            tmp_path, clean_settings):
    """benchmark_suite.train_step_check: two short epochs from the same start with each step; fused AdamW
    changes only the order of floating-point work, so the per-epoch losses agree within 1e-4; then the run's
    own step twice more in deterministic mode, bit-identical."""
    config = finished_runs["config"].replace(seed=0, train_step="fused", results_dir=str(tmp_path / "results"))
    check = benchmark_suite.train_step_check(config, 32, steps=("eager", "fused"), deterministic_check=True, epochs=2)
    assert repro.current_settings() == clean_settings
    assert (check["images"], check["epochs"], check["batch_size"]) == (32, 2, 16)
    assert check["read_loss_every"] == train.READ_LOSS_EVERY and check["provenance"]["versions"]
    eager, fused = check["variants"]
    assert (eager["train_step"], fused["train_step"]) == ("eager", "fused")
    assert len(eager["losses"]) == 2 and eager["losses"] != fused["losses"][::-1]
    assert fused["max_rel_loss_difference"] <= benchmark_suite.STEP_CHECK_TOLERANCE and fused["within_tolerance"]
    assert eager["speedup"] == 1.0 and fused["images_per_s"] > 0
    record = check["deterministic"]
    assert record["train_step"] == "fused" and record.get("error") is None
    assert record["bit_identical"] is True and record["losses"][0] == record["losses"][1]
    assert len(record["losses"]) == 2 == len(record["images_per_s_repeats"])
    assert record["default_losses"] == fused["losses"] and record["default_images_per_s"] == fused["images_per_s"]
    assert record["deterministic_images_per_s"] > 0 and record["relative_speed"] == pytest.approx(
        record["deterministic_images_per_s"] / fused["images_per_s"])
    assert record["settings"]["use_deterministic_algorithms"] is True
    saved = read_json(rf.encoder_dir(config) / "step_check.json")
    assert saved["variants"][1]["train_step"] == "fused" and saved["deterministic"]["bit_identical"] is True
    # the training chapter's table
    table = tables.deterministic_table(check)
    assert list(table.index) == ["default", "deterministic, repeat 1", "deterministic, repeat 2"]
    assert table["loss per epoch"].iloc[1] == table["loss per epoch"].iloc[2]
    assert table["images/s"].iloc[0] == fused["images_per_s"] and table["of the default's"].iloc[0] == 1.0
    assert tables.deterministic_table({"variants": []}).empty and tables.deterministic_table(None).empty
    failed = {"deterministic": {"train_step": "fused", "error": "NondeterministicOperationError: ... put_ ..."}}
    assert tables.deterministic_table(failed).empty
    assert "put_" in benchmark_suite.deterministic_line(failed["deterministic"])


def test_the_step_check_command_line_takes_the_deterministic_check():
    parser = benchmark_suite.build_parser()
    assert parser.parse_args(["--results-dir", "r", "--deterministic-check"]).deterministic_check is True
    assert parser.parse_args(["--results-dir", "r"]).deterministic_check is None  # the profile's setting
    line = benchmark_suite.deterministic_line({"train_step": "eager", "repeats": 2, "deterministic_images_per_s": 90.0,
                                               "default_images_per_s": 100.0, "relative_speed": 0.9,
                                               "bit_identical": True})
    assert "x0.90" in line and "bit-identical" in line
