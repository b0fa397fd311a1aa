"""Numerical precision of a run: fp32 (TF32 off), fp32-tf32conv (PyTorch's default), tf32, bf16, fp16."""

from __future__ import annotations

import contextlib

import torch

from .profiles import PRECISIONS


@contextlib.contextmanager
def precision_context(precision: str, device="cpu", autocast: bool = True):
    """Set the float32 matmul mode for ``precision`` (TF32 flags, matmul precision) and, with ``autocast``, enter
    autocast for bf16/fp16; restore on exit. fp32: TF32 off; fp32-tf32conv: only cuDNN convolutions in TF32
    (the paper's "FP32"); tf32: TF32 on; bf16, fp16: TF32 off for float32 work left."""
    if precision not in PRECISIONS:
        raise ValueError(f"parameter precision={precision!r} is not one of {list(PRECISIONS)}")
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
             torch.get_float32_matmul_precision())
    tf32 = precision == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32 or precision == "fp32-tf32conv"
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        with autocast_region(precision, device) if autocast else contextlib.nullcontext():
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[0], saved[1]
        torch.set_float32_matmul_precision(saved[2])


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_region(precision: str, device):
    """Autocast on ``device``'s type for ``precision`` bf16 or fp16; nothing otherwise."""
    if precision in AUTOCAST_DTYPES:
        return torch.autocast(device_type=torch.device(device).type, dtype=AUTOCAST_DTYPES[precision])
    return contextlib.nullcontext()
