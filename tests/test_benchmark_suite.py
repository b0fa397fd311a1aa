"""What the benchmark chapter measures for one encoder (mvlip_utils.measure.benchmark_suite), as the session's smoke
study (conftest's ``smoke_study``) recorded it, with the parts that need no study checked on their own: FLOPs
counted once per tower, an out-of-memory setting, the records the chapters look up, the step check's command."""

import dataclasses
import json
import math

import pandas as pd
import pytest
import torch
from conftest import TINY

from mvlip_utils.data.files import read_json, write_json
from mvlip_utils.measure import benchmark
from mvlip_utils.measure import benchmark_suite as suite
from mvlip_utils.settings.profiles import BenchSettings, get_bench_settings, get_config
from mvlip_utils.train import run_folder

BENCH_FIELDS = {f.name for f in dataclasses.fields(BenchSettings)}


def records(smoke_study, encoder):
    blob = run_folder.read_benchmark(smoke_study["results"] / encoder / "benchmark.json")
    return blob["records"], blob["provenance"]


def test_the_session_studys_benchmark_chapters_measured_each_part(smoke_study):
    """What 04_benchmark wrote for each tower of the session study (TINY's settings on the smoke profile)."""
    bench = get_bench_settings("smoke", **{k: v for k, v in TINY.items() if k in BENCH_FIELDS})
    for encoder in ("mambavision", "swin"):
        found, provenance = records(smoke_study, encoder)
        config = read_json(smoke_study["results"] / encoder / "seed-0" / "config.json")
        kinds = [r["kind"] for r in found]
        assert kinds == (["eval_loop"] * 2 + ["model_only"] * 3 + ["resolution_sweep"] * 2
                         + (["scan_cost"] * 3 if encoder == "mambavision" else []) + ["flops"] * 2)
        loop = [r for r in found if r["kind"] == "eval_loop"]
        assert [(r["source"], r["num_workers"]) for r in loop] == [("jpeg", bench.eval_workers), ("uint8_cache", 0)]
        for r in loop:  # every validation image, each pass timed
            assert r["n_images"] == config["n_val"] and r["repeats"] == bench.eval_repeats
            assert r["images_per_s_min"] <= r["images_per_s"] <= r["images_per_s_max"]
        alone = [(r["setting"], r["mode"], r["precision"], r["batch_size"], r["channels_last"])
                 for r in found if r["kind"] == "model_only"]
        assert alone == [(suite.PAPER, "inference", "fp32", TINY["eval_batch_size"], False),
                         (suite.PAPER, "train", "fp32", TINY["batch_size"], False),
                         (suite.BEST, "inference", "bf16", TINY["best_batch"], True)]
        sweep = [r for r in found if r["kind"] == "resolution_sweep"]
        assert [(r["resolution"], r["batch_size"]) for r in sweep] == [(32, 8), (64, 2)]  # pixels per batch held
        counted = read_json(smoke_study["results"] / encoder / "flops.json")
        assert counted["image_size"] == TINY["image_size"] == sweep[0]["resolution"]
        assert counted["inference"] == sweep[0]["flops_per_image"] < sweep[1]["flops_per_image"]
        assert [r["flops_per_image"] for r in found if r["kind"] == "flops"] == [counted["inference"], counted["train"]]
        assert [r["flops_per_image"] for r in found if r["kind"] == "model_only"][:2] == [counted["inference"],
                                                                                         counted["train"]]
        for r in (r for r in found if r["kind"] == "scan_cost"):
            assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
            assert r["images_per_s_with_scan"] == pytest.approx(r["batch_size"] / r["a_median_s"])
        assert provenance["encoder"] == encoder and provenance["bench_settings"]["repeats"] == TINY["repeats"]


def test_flops_are_counted_once_per_tower_architecture(tmp_path):
    config = get_config("smoke", encoder="vit", image_size=32, results_dir=str(tmp_path), device="cpu")
    path = run_folder.encoder_dir(config) / "flops.json"
    flops = suite.run_flops(config, "cpu")
    saved = read_json(path)
    assert saved["train"] == flops["train"] > flops["inference"] > 0 and saved["image_size"] == 32
    write_json(path, {**saved, "train": 1.5})  # kept: read back, not counted again
    assert suite.run_flops(config, "cpu")["train"] == 1.5
    write_json(path, {**saved, "train": 1.5, "architecture": {"another": "tower"}})  # another tower: counted again
    assert suite.run_flops(config, "cpu")["train"] == flops["train"]
    assert [(r["kind"], r["mode"], r["flops_per_image"]) for r in suite.flops_records(flops, config)] == [
        ("flops", "inference", flops["inference"]), ("flops", "train", flops["train"])]


class OOMAbove(torch.nn.Module):
    """Runs out of memory at a batch larger than ``limit`` (as a GPU does at the best settings' large batch)."""

    def __init__(self, limit, message="CUDA out of memory. Tried to allocate 80.00 GiB (fake)"):
        super().__init__()
        self.limit, self.message, self.lin = limit, message, torch.nn.Linear(3, 2)

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError(self.message) if "memory" in self.message else RuntimeError(self.message)
        return self.lin(x.mean(dim=(2, 3)))


def test_an_out_of_memory_at_the_large_batch_keeps_the_other_settings():
    config = get_config("smoke", encoder="vit", image_size=16, batch_size=4, eval_batch_size=4, device="cpu")
    bench = get_bench_settings("smoke", warmup=1, repeats=1, best_batch=64)
    out = suite.model_only_records(OOMAbove(limit=8), config, bench, "cpu")
    assert [r["images_per_s"] is not None for r in out] == [True, True, False]
    assert out[2]["setting"] == suite.BEST and out[2]["error"].startswith("out of memory")
    with pytest.raises(RuntimeError, match="shape mismatch"):  # any other error is not a measurement
        suite.model_only_records(OOMAbove(limit=8, message="shape mismatch"), config, bench, "cpu")


def test_benchmark_records_are_found_by_their_fields():
    frame = pd.DataFrame([{"kind": "model_only", "setting": suite.PAPER, "mode": "inference", "images_per_s": 10.0},
                          {"kind": "model_only", "setting": suite.PAPER, "mode": "train", "images_per_s": None},
                          {"kind": "eval_loop", "source": "jpeg", "images_per_s": 5.0}])
    entry = {"benchmark": frame}
    benchmark_rate = benchmark.benchmark_rate
    assert suite.benchmark_record(entry, kind="eval_loop", source="jpeg")["images_per_s"] == 5.0
    assert suite.benchmark_record(entry, kind="model_only", mode="inference")["images_per_s"] == 10.0
    assert suite.benchmark_record(entry, kind="model_only", setting=suite.BEST) is None
    assert suite.benchmark_record(entry, kind="flops", no_such_field=1) is None
    assert suite.benchmark_record({"benchmark": None}, kind="eval_loop") is None
    assert benchmark_rate(entry, kind="eval_loop") == 5.0
    assert math.isnan(benchmark_rate(entry, kind="model_only", mode="train"))
    assert math.isnan(benchmark_rate({}, kind="eval_loop"))


def test_the_step_check_command_checks_each_encoder_with_the_profiles_settings(tmp_path, monkeypatch, capsys):
    calls = []

    def check(config, images, steps, profile_steps, deterministic_check):
        calls.append((config.encoder, config.results_dir, images, steps, profile_steps, deterministic_check))
        return {"variants": [{"train_step": "eager", "images_per_s": 10.0, "max_rel_loss_difference": 0.0},
                             {"train_step": "fused", "images_per_s": None, "max_rel_loss_difference": None,
                              "error": "RuntimeError: x"}],
                "deterministic": {"train_step": "eager", "error": "RuntimeError: no deterministic kernel"}}

    monkeypatch.setattr(suite, "train_step_check", check)
    assert suite.main(["--profile", "smoke", "--encoders", "vit", "swin", "--results-dir", str(tmp_path),
                       "--images", "64", "--steps", "eager", "fused"]) == 0
    smoke = get_bench_settings("smoke")
    assert calls == [(e, str(tmp_path), 64, ("eager", "fused"), smoke.step_profile_steps, smoke.step_check_deterministic)
                     for e in ("vit", "swin")]
    out = capsys.readouterr().out
    assert "RuntimeError: x" in out and "deterministic: RuntimeError: no deterministic kernel" in out
    assert suite.main(["--profile", "smoke", "--encoders", "resnet", "--results-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("error: ")
    with pytest.raises(SystemExit):
        suite.main(["--profile", "smoke", "--results-dir", str(tmp_path), "--steps", "fast"])


def test_the_session_studys_step_check_compares_each_step_with_the_eager_one(smoke_study):
    for encoder in ("mambavision", "swin"):
        check = json.loads((smoke_study["results"] / encoder / "step_check.json").read_text())
        assert [v["train_step"] for v in check["variants"]] == ["eager", "fused"]
        eager, fused = check["variants"]
        assert len(eager["losses"]) == check["epochs"] == 2 and check["images"] == TINY["step_check_images"]
        assert eager["max_rel_loss_difference"] == 0.0 and eager["speedup"] == 1.0
        worst = max(abs(a - b) / abs(b) for a, b in zip(fused["losses"], eager["losses"]))
        assert fused["max_rel_loss_difference"] == pytest.approx(worst)
        assert fused["within_tolerance"] == (worst <= suite.STEP_CHECK_TOLERANCE)
        assert fused["within_tolerance"]  # fused AdamW computes the eager step's losses
        assert check["provenance"]["command"] and check["provenance"]["versions"]
        repeat = check["deterministic"]
        assert repeat["train_step"] == "eager" and repeat["default_losses"] == eager["losses"]
        assert repeat["bit_identical"] is True and repeat["losses"][0] == repeat["losses"][1]
