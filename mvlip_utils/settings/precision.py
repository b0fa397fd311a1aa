"""Numerical precision of a run, in one place: fp32 (TF32 off), fp32-tf32conv (PyTorch's default), tf32, bf16.

``precision_context`` sets the float32 matmul mode (cuBLAS and cuDNN TF32 flags and
``torch.set_float32_matmul_precision``) for everything inside it, forward and backward, and restores the
previous settings on exit; ``autocast`` is the autocast region for a forward pass.
"""

from __future__ import annotations

import contextlib

import torch

from .profiles import PRECISIONS


def _device_type(device) -> str:
    return device.type if isinstance(device, torch.device) else torch.device(device).type


@contextlib.contextmanager
def precision_context(precision: str, device="cpu", autocast: bool = True):
    """Set the float32 matmul mode for ``precision`` and (``autocast=True``) enter autocast for bf16;
    restore the previous settings on exit.

    fp32: TF32 explicitly off (cuBLAS and cuDNN), ``float32_matmul_precision("highest")``.
    fp32-tf32conv: PyTorch's defaults: matmuls in fp32 (cuBLAS TF32 off, "highest"), cuDNN convolutions in
    TF32 (``torch.backends.cudnn.allow_tf32`` is True unless changed): what the paper's "FP32" ran as.
    tf32: TF32 on (cuBLAS and cuDNN), ``float32_matmul_precision("high")``, no autocast.
    bf16: TF32 off for any float32 work left, ``torch.autocast(device.type, dtype=torch.bfloat16)``.
    """
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


def autocast_region(precision: str, device):
    """bf16 autocast on ``device``'s type for ``precision='bf16'``; nothing otherwise."""
    if precision == "bf16":
        return torch.autocast(device_type=_device_type(device), dtype=torch.bfloat16)
    return contextlib.nullcontext()
