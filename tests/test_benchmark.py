"""mvlip_utils.measure: the timing method (benchmark), cost against resolution (sweep) and FLOPs (flops), on the
CPU with tiny models."""
from __future__ import annotations

import math
import socket
import time

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mvlip_utils.measure import benchmark as B
from mvlip_utils.measure import sweep as S
from mvlip_utils.measure import flops
from mvlip_utils.train.experiment import make_adamw


def tiny_vit(img_size: int = 32):
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=img_size,
                             patch_size=8, embed_dim=32, depth=1, num_heads=2)


class Probe(nn.Module):
    """Records what the benchmark feeds it and the numeric mode it runs under."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 5)
        self.seen = []

    def forward(self, x):
        h = self.conv(x).mean(dim=(2, 3))
        out = self.fc(h)
        self.seen.append(dict(std=float(x.float().std()), zeros=bool((x == 0).all()), in_dtype=x.dtype,
                              out_dtype=out.dtype, shape=tuple(x.shape), grad=torch.is_grad_enabled(),
                              tf32=torch.backends.cuda.matmul.allow_tf32,
                              cudnn_tf32=torch.backends.cudnn.allow_tf32,
                              channels_last=x.is_contiguous(memory_format=torch.channels_last) and x.shape[-1] > 1
                              and not x.is_contiguous(), training=self.training))
        return out


# ------------------------------------------------------------------------------------------ timing
def test_time_callable_measures_known_sleep():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.02)

    times = B.time_callable(fn, "cpu", warmup=2, repeats=7)
    assert len(calls) == 9 and len(times) == 7  # warm-up calls are made but not timed
    assert 0.019 <= times.min() and np.median(times) < 0.25  # sleep never returns early; generous for a busy machine


def test_time_callable_scales_with_work():
    short = np.median(B.time_callable(lambda: time.sleep(0.005), "cpu", warmup=1, repeats=5))
    long = np.median(B.time_callable(lambda: time.sleep(0.04), "cpu", warmup=1, repeats=5))
    assert long > 2 * short


# ------------------------------------------------------------------------------- model throughput
def test_model_throughput_is_consistent_and_records_conditions():
    probe = Probe()
    r = B.model_throughput(probe, batch_size=3, image_size=16, precision="fp32", mode="inference",
                           device="cpu", warmup=2, repeats=4)
    assert r["seconds_per_image"] == pytest.approx(1 / r["images_per_s"])
    for key, value in dict(batch_size=3, image_size=16, precision="fp32", mode="inference", channels_last=False,
                           repeats=4, warmup=2, peak_memory_bytes=None).items():
        assert r[key] == value, key
    assert r["device_name"].startswith("CPU") and socket.gethostname() not in r["device_name"]
    assert r["images_per_s_p10"] <= r["images_per_s"] <= r["images_per_s_p90"]
    assert len(probe.seen) == 2 + 4
    for s in probe.seen:  # random inputs (never zeros), no autograd, fp32 with TF32 off
        assert s["shape"] == (3, 3, 16, 16) and not s["zeros"] and s["std"] > 0.5
        assert s["in_dtype"] == torch.float32 and s["out_dtype"] == torch.float32
        assert not s["grad"] and not s["tf32"] and not s["cudnn_tf32"] and not s["training"]


def test_precision_modes_set_and_restore_tf32_and_autocast():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
              torch.get_float32_matmul_precision())
    probe = Probe()
    B.model_throughput(probe, 2, 8, precision="tf32", warmup=1, repeats=1)
    assert probe.seen[-1]["tf32"] and probe.seen[-1]["cudnn_tf32"]
    probe.seen.clear()
    r = B.model_throughput(probe, 2, 8, precision="bf16", channels_last=True, warmup=1, repeats=2)
    assert r["precision"] == "bf16" and r["channels_last"] is True
    assert all(s["out_dtype"] == torch.bfloat16 for s in probe.seen)  # autocast ran on the CPU
    assert all(s["channels_last"] for s in probe.seen)
    assert all(not s["tf32"] for s in probe.seen)
    after = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    assert after == before


def test_bf16_autocast_on_a_timm_model_on_cpu():
    r = B.model_throughput(tiny_vit(32), 2, 32, precision="bf16", mode="inference", warmup=1, repeats=2)
    assert r["images_per_s"] > 0 and math.isfinite(r["images_per_s"])


def test_train_mode_is_a_real_training_step():
    model = tiny_vit(32)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    r = B.model_throughput(model, 2, 32, precision="fp32", mode="train", warmup=1, repeats=2)
    assert r["mode"] == "train" and r["seconds_per_image"] == pytest.approx(1 / r["images_per_s"])
    assert r["optimizer"] == "foreach"  # PyTorch's default AdamW, as the authors ran it
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) >= len(before) // 2  # AdamW stepped (almost) every parameter
    assert all(p.grad is None for p in model.parameters())  # gradients released afterwards

    frozen = tiny_vit(32)
    ref = {k: v.detach().clone() for k, v in frozen.state_dict().items()}
    B.model_throughput(frozen, 2, 32, mode="inference", warmup=1, repeats=2)
    assert all(torch.equal(v, ref[k]) for k, v in frozen.state_dict().items())


def test_train_mode_under_bf16_sees_grad_and_training():
    probe = Probe()
    B.model_throughput(probe, 2, 8, precision="bf16", mode="train", warmup=1, repeats=1)
    assert all(s["grad"] and s["training"] and s["out_dtype"] == torch.bfloat16 for s in probe.seen)


# ------------------------------------------------------------------------------------- eval loop
def test_eval_loop_throughput_is_images_over_wall_time():
    def loop():
        time.sleep(0.05)
        return {"n_val": 20}

    r = B.eval_loop_throughput(loop)
    assert r["n_images"] == 20
    assert 0.049 <= r["wall_time_s"] < 0.5
    assert r["images_per_s"] == pytest.approx(20 / r["wall_time_s"])
    r2 = B.eval_loop_throughput(lambda: time.sleep(0.01) or {"n_val": 7}, repeats=3)
    assert r2["n_images"] == 7 and r2["repeats"] == 3
    assert r2["images_per_s_min"] <= r2["images_per_s"] <= r2["images_per_s_max"]


# ------------------------------------------------------------------------------ resolution sweeps
def test_resolution_sweep_on_tiny_vit():
    made = []

    def factory(res):
        made.append(res)
        return tiny_vit(res)

    df = S.resolution_sweep(factory, [16, 32, 48], batch_size=lambda r: S.scaled_batch_size(8, 16, r),
                            precision="fp32", warmup=1, repeats=2)
    assert made == [16, 32, 48]
    assert isinstance(df, pd.DataFrame) and len(df) == 3
    assert list(df["pixels"]) == [256, 1024, 2304] and df["pixels"].is_monotonic_increasing
    assert list(df["batch_size"]) == [8, 2, 1]
    assert df["peak_memory_bytes"].isna().all() and df["marginal_memory_per_image_bytes"].isna().all()  # CPU
    assert (df["images_per_s"] > 0).all() and not df["oom"].any() and df["error"].isna().all()
    assert np.allclose(df["seconds_per_image"] * df["images_per_s"], 1.0)
    for col in ("resolution", "pixels", "images_per_s", "seconds_per_image", "peak_memory_bytes", "oom"):
        assert col in df.columns
    # the FLOPs of one image's forward pass, counted at each resolution: what the architecture predicts
    assert df["flops_per_image"].tolist() == [flops.flops_per_image(tiny_vit(r), r, "inference") for r in (16, 32, 48)]
    assert df["flops_per_image"].is_monotonic_increasing
    assert 0.8 < S.fit_growth_exponent(df["pixels"], df["flops_per_image"]) < 1.5  # per-token layers dominate


def test_resolution_sweep_with_one_module_at_every_resolution():
    import timm

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8,
                            embed_dim=32, depth=1, num_heads=2, dynamic_img_size=True)
    df = S.resolution_sweep(lambda r: vit, [16, 40], batch_size={16: 2, 40: 1}.get, precision="fp32", warmup=1,
                            repeats=1)
    assert list(df["resolution"]) == [16, 40] and list(df["batch_size"]) == [2, 1] and (df["images_per_s"] > 0).all()


class OOMAt(nn.Module):
    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        if x.shape[-1] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB (fake)")
        return self.lin(x.mean(dim=(2, 3)))


def test_resolution_sweep_records_oom_and_continues():
    model = OOMAt(limit=20)
    df = S.resolution_sweep(lambda r: model, [8, 16, 32, 12], lambda r: 2, precision="fp32", warmup=1, repeats=1)
    assert list(df["oom"]) == [False, False, True, False]
    oom = df[df["oom"]].iloc[0]
    assert math.isnan(oom["images_per_s"]) and "OutOfMemoryError" in oom["error"]
    assert df[~df["oom"]]["images_per_s"].gt(0).all()  # the resolution after the OOM still ran


def test_resolution_sweep_oom_in_factory_and_other_errors():
    def factory(res):
        if res == 32:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (fake, while building)")
        return OOMAt(limit=1000)

    df = S.resolution_sweep(factory, [8, 32], lambda r: 1, precision="fp32", warmup=1, repeats=1)
    assert list(df["oom"]) == [False, True]

    def broken(res):
        raise AssertionError("feature map not divisible by window")

    df = S.resolution_sweep(broken, [8], lambda r: 1)  # another error is recorded too, not only an OOM
    assert not df["oom"].iloc[0] and "window" in df["error"].iloc[0] and math.isnan(df["images_per_s"].iloc[0])


def test_is_oom_error():
    assert B.is_oom_error(torch.cuda.OutOfMemoryError("x"))
    assert B.is_oom_error(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not B.is_oom_error(RuntimeError("shape mismatch"))
    assert not B.is_oom_error(ValueError("out of memory"))


@pytest.mark.parametrize("exponent", [1.0, 2.0])
def test_fit_growth_exponent_recovers_power_laws(exponent):
    rng = np.random.default_rng()  # fresh coefficients every run
    a = rng.uniform(1e-6, 1e-2)
    pixels = np.array([224, 448, 672, 896, 1120], dtype=float) ** 2
    noise = rng.uniform(0.97, 1.03, size=pixels.shape)
    cost = a * pixels ** exponent * noise
    assert S.fit_growth_exponent(pixels, cost) == pytest.approx(exponent, abs=0.05)
    b = rng.uniform(0.3, 2.5)
    assert S.fit_growth_exponent(pixels, a * pixels ** b) == pytest.approx(b, abs=1e-9)


def test_fit_growth_exponent_drops_bad_points_and_rejects_too_few():
    pixels = [100.0, 400.0, 900.0, 1600.0]
    assert S.fit_growth_exponent(pixels, [1.0, 4.0, float("nan"), 16.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two distinct"):
        S.fit_growth_exponent([100.0, 400.0], [1.0, float("nan")])
    with pytest.raises(ValueError):  # unequal lengths
        S.fit_growth_exponent([1.0, 2.0, 3.0], [1.0, 2.0])


def test_scaled_batch_size_keeps_pixels_per_batch():
    assert [S.scaled_batch_size(128, 224, r) for r in (224, 448, 672, 896, 1120)] == [128, 32, 14, 8, 5]
    assert S.scaled_batch_size(4, 224, 2240) == 1


# ---------------------------------------------------------------------------------- optimisers, FLOPs
def test_fused_adamw_takes_the_same_step_as_the_default_one():
    torch.manual_seed(0)
    a, b = nn.Linear(8, 4), nn.Linear(8, 4)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = make_adamw(a.parameters(), 1e-2), make_adamw(b.parameters(), 1e-2, fused=True)
    assert opt_b.defaults["fused"] is True and not opt_a.defaults.get("fused")
    x = torch.randn(16, 8)
    for _ in range(5):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    frozen = nn.Linear(2, 2)
    frozen.bias.requires_grad_(False)
    assert make_adamw(frozen.parameters()).param_groups[0]["params"] == [frozen.weight]  # trainable ones only
    fused = B.model_throughput(Probe(), 2, 8, mode="train", fused=True, warmup=1, repeats=1)
    assert fused["optimizer"] == "fused"


def test_flops_per_image_counts_matmuls_and_convolutions():
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10))
    assert flops.flops_per_image(linear, 4, "inference") == 2 * 48 * 10  # one multiply-add = 2 FLOPs
    # a training step adds the backward pass: gradients of the weights (and of the input) take about twice
    train = flops.flops_per_image(linear, 4, "train")
    assert 2 * 2 * 48 * 10 <= train <= 3 * 2 * 48 * 10
    conv = nn.Conv2d(3, 8, kernel_size=3, padding=1)
    assert flops.flops_per_image(conv, 6, "inference") == 2 * (3 * 3 * 3) * 8 * 6 * 6
    assert conv.training  # the module's mode is restored
    assert all(p.grad is None for p in linear.parameters())


def test_utilisation_is_achieved_flops_over_the_datasheet_peak():
    assert flops.peak_flops("NVIDIA H200", "fp32") == flops.peak_flops("NVIDIA H200", "fp32-tf32conv") == 66.9e12
    assert flops.peak_flops("NVIDIA H200", "bf16") > flops.peak_flops("NVIDIA H200", "tf32") > 66.9e12
    assert flops.peak_flops("CPU (x86_64, 2 cores)", "fp32") is None
    u = flops.utilisation_fields(1e9, 6690.0, "NVIDIA H200", "fp32")
    assert u["tflops_per_s"] == pytest.approx(6.69) and u["utilisation"] == pytest.approx(0.1)
    assert flops.utilisation_fields(1e9, 10.0, "CPU (x86_64, 2 cores)", "fp32")["utilisation"] is None
    assert flops.utilisation_fields(None, 10.0, "NVIDIA H200", "fp32")["tflops_per_s"] is None


def test_interleaved_ratio_alternates_and_reports_the_spread():
    order = []
    r = B.interleaved_ratio(lambda: (order.append("a"), time.sleep(0.004)), lambda: (order.append("b"), time.sleep(0.002)),
                            rounds=3, warmup=1, repeats=3)
    assert order == (["a"] * 4 + ["b"] * 4) * 3  # round by round: a's warm-up and repeats, then b's
    assert 0.3 < r["ratio"] < 0.9  # b takes about half of a's time: a runs at about half b's throughput
    assert r["ratio_min"] <= r["ratio"] <= r["ratio_max"] and r["rounds"] == 3
