"""The optimiser the study trains with: AdamW, PyTorch's default implementation or its fused one."""

from __future__ import annotations

import torch

OPTIMIZERS = ("foreach", "fused")  # torch.optim.AdamW's default (foreach on CUDA) and fused=True


def make_adamw(parameters, lr: float = 1e-4, weight_decay: float = 0.01, optimizer: str = "foreach"):
    """AdamW as the study trains with it: ``foreach`` is PyTorch's default implementation (what the
    authors' code ran), ``fused`` its single-kernel one (``fused=True``; CUDA and CPU float tensors)."""
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"parameter optimizer={optimizer!r} is not one of {list(OPTIMIZERS)}")
    params = [p for p in parameters if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True if optimizer == "fused" else None)
