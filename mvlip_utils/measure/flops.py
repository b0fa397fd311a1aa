"""FLOPs per image of a tower (``FlopCounterMode``) and achieved FLOP/s as a fraction of a GPU's datasheet peak."""

from __future__ import annotations

import math

import torch
from torch import nn

MODES = ("inference", "train")


# Dense peak rates in FLOP/s by the vendor's datasheets (leads, not measurements): fp32 on the CUDA cores,
# tf32 and bf16 on the tensor cores. fp32-tf32conv runs its matmuls in fp32, so fp32's peak bounds it.
PEAK_FLOPS = {
    "NVIDIA H200": {"fp32": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12},
    "NVIDIA H100 80GB HBM3": {"fp32": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12},
    "NVIDIA A100-SXM4-80GB": {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12},
    "NVIDIA GeForce RTX 4070 Ti SUPER": {"fp32": 44.1e12, "tf32": 44.1e12, "bf16": 88.2e12},
}
_PEAK_OF_PRECISION = {"fp32": "fp32", "fp32-tf32conv": "fp32", "tf32": "tf32", "bf16": "bf16", "fp16": "bf16"}


def peak_flops(device_name: str | None, precision: str) -> float | None:
    """The datasheet peak FLOP/s of ``device_name`` for ``precision``; None when not in ``PEAK_FLOPS``."""
    return PEAK_FLOPS.get(device_name or "", {}).get(_PEAK_OF_PRECISION[precision])


def utilisation_fields(flops_per_image: float | None, images_per_s: float, device_name: str | None,
                       precision: str) -> dict:
    """{flops_per_image, tflops_per_s, utilisation} of a throughput (None where unknown)."""
    if not flops_per_image or not math.isfinite(images_per_s):
        return dict(flops_per_image=flops_per_image, tflops_per_s=None, utilisation=None)
    achieved, peak = flops_per_image * images_per_s, peak_flops(device_name, precision)
    return dict(flops_per_image=float(flops_per_image), tflops_per_s=achieved / 1e12,
                utilisation=achieved / peak if peak else None)


def flops_per_image(module: nn.Module, image_size: int, mode: str = "inference", device="cpu",
                    batch_size: int = 2) -> float:
    """FLOPs per image of a forward (``inference``) or forward + backward (``train``) on random images: matmuls,
    convolutions, attention (not elementwise work such as a scan's recurrence); a multiply-add is 2 FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    dev = torch.device(device)
    module = module.to(dev)
    was_training = module.training
    module.train(mode == "train")
    x = torch.randn((batch_size, 3, image_size, image_size), device=dev)
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            if mode == "train":
                module(x).float().pow(2).mean().backward()
            else:
                with torch.no_grad():
                    module(x)
    finally:
        module.zero_grad(set_to_none=True)
        module.train(was_training)
    return counter.get_total_flops() / batch_size
