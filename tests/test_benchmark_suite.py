"""What the benchmark chapter measures for one run (mvlip_utils.measure.benchmark_suite), on tiny smoke towers."""

import dataclasses

import pytest

from mvlip_utils.measure import benchmark_suite as suite
from mvlip_utils.train import experiment as exp
from mvlip_utils.train import results
from mvlip_utils.settings.profiles import get_bench_settings, get_config


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    config = get_config("smoke", encoder="mambavision", generated_classes=3, generated_train_per_class=4,
                        generated_val_per_class=4, image_size=32, batch_size=4, eval_batch_size=4, device="cpu",
                        data_dir=str(tmp / "data"), results_dir=str(tmp / "results"))
    return exp.build_experiment(config, progress=False)


BENCH = get_bench_settings("smoke", warmup=1, repeats=2, eval_repeats=2, eval_workers=2, best_batch=4,
                           resolutions=[32, 48], sweep_batch=4)


def test_eval_loop_records_the_papers_method_from_files_and_from_the_cache(experiment):
    records = suite.eval_loop_records(experiment, BENCH)
    assert [(r["source"], r["num_workers"]) for r in records] == [("jpeg", 2), ("uint8_cache", 0)]
    for r in records:
        assert r["kind"] == "eval_loop" and r["n_images"] == 12 and r["repeats"] == 2
        assert r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]


def test_model_only_records_cover_the_papers_conditions_and_the_best_settings(experiment):
    config = experiment.config.replace(precision="fp32-tf32conv")
    flops = suite.run_flops(config, "cpu")
    records = suite.model_only_records(experiment.model.visual, config, BENCH, "cpu", flops)
    got = [(r["setting"], r["mode"], r["precision"], r["batch_size"], r.get("optimizer")) for r in records]
    assert got == [(suite.PAPER, "inference", "fp32-tf32conv", 4, None), (suite.PAPER, "train", "fp32-tf32conv", 4, "foreach"),
                   (suite.PAPER_FUSED, "train", "fp32-tf32conv", 4, "fused"),
                   (suite.STRICT, "inference", "fp32", 4, None), (suite.STRICT, "train", "fp32", 4, "foreach"),
                   (suite.BEST, "inference", "bf16", 4, None), (suite.BEST, "train", "bf16", 4, "fused")]
    assert all(r["kind"] == "model_only" and r["images_per_s"] > 0 for r in records)
    assert records[1]["flops_per_image"] == flops["train"] and records[0]["flops_per_image"] == flops["inference"]
    # FLOPs are counted once and kept in the run folder
    path = results.run_dir(config) / "flops.json"
    assert results.read_json(path)["train"] == flops["train"] > flops["inference"] > 0
    path.write_text(path.read_text().replace(str(flops["train"]), "1.5"))
    assert suite.run_flops(config, "cpu")["train"] == 1.5


def test_compile_runs_in_a_child_process_with_a_time_limit(experiment):
    config = experiment.config
    skipped = suite.compiled_record(config, dataclasses.replace(BENCH, compile_timeout_s=0), "cpu")
    assert skipped["error"].startswith("skipped") and skipped["setting"] == suite.COMPILED
    timed_out = suite.compiled_record(config, dataclasses.replace(BENCH, compile_timeout_s=1), "cpu")
    assert timed_out["error"] == "timed out after 1 s" and timed_out["images_per_s"] is None
    done = suite.compiled_record(config, dataclasses.replace(BENCH, compile_timeout_s=240), "cpu", backend="eager")
    assert done.get("error") is None, done.get("error")
    assert done["compile"] is True and done["images_per_s"] > 0 and done["compile_backend"] == "eager"


def test_sweep_and_scan_cost(experiment):
    from mvlip_utils.models.towers import create_image_tower

    config = experiment.config
    sweep = suite.sweep_records(lambda r: create_image_tower("mambavision", "smoke", image_size=r), config, BENCH, "cpu")
    assert [r["resolution"] for r in sweep] == [32, 48] and all(r["kind"] == "resolution_sweep" for r in sweep)
    scan = suite.scan_cost_records(experiment.model.visual, config, dataclasses.replace(BENCH, repeats=2), "cpu", rounds=2)
    assert [(r["mode"], r["precision"]) for r in scan] == [("inference", "fp32"), ("train", "fp32"), ("inference", "bf16")]
    for r in scan:
        assert r["kind"] == "scan_cost" and r["ratio_min"] <= r["ratio"] <= r["ratio_max"] and r["rounds"] == 2
        assert r["images_per_s_with_scan"] == pytest.approx(r["batch_size"] / r["a_median_s"])


def test_the_step_check_command_writes_each_encoders_check_with_its_provenance(tmp_path, monkeypatch):
    from mvlip_utils.train import loop as train

    monkeypatch.setattr(train, "READ_LOSS_EVERY", train.READ_LOSS_EVERY)  # the command sets it: restored after
    monkeypatch.chdir(tmp_path)
    code = suite.main(["--profile", "smoke", "--encoders", "vit", "--results-dir", "probe", "--images", "96",
                       "--profile-steps", "1", "--read-loss-every", "1"])
    assert code == 0
    check = results.read_json(tmp_path / "probe" / "smoke" / "vit" / "step_check.json")
    assert [v["train_step"] for v in check["variants"]] == ["eager", "fused"]
    assert check["read_loss_every"] == 1 and check["provenance"]["command"] and check["provenance"]["versions"]
    assert check["variants"][1]["profile"]["steps"] == 1 and check["variants"][1]["within_tolerance"]
    assert suite.main(["--profile", "smoke", "--encoders", "vit", "--results-dir", "probe",
                       "--read-loss-every", "0"]) == 2
