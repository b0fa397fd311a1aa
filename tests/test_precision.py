"""One place for numerical precision: TF32 mode for a whole region, bf16 or fp16 autocast for a forward pass."""

import pytest
import torch

from mvlip_utils.settings.precision import autocast_region, precision_context
from mvlip_utils.settings.profiles import PRECISIONS


def _flags():
    return (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
            torch.get_float32_matmul_precision())


@pytest.mark.parametrize("precision, matmul_tf32, conv_tf32", [
    ("fp32", False, False), ("fp32-tf32conv", False, True), ("tf32", True, True), ("bf16", False, False),
    ("fp16", False, False)])
def test_precision_context_sets_the_tf32_mode_and_restores_it(precision, matmul_tf32, conv_tf32):
    before = _flags()
    with precision_context(precision, "cpu", autocast=False):
        assert _flags() == (matmul_tf32, conv_tf32, "high" if matmul_tf32 else "highest")
        assert not torch.is_autocast_enabled("cpu")
    assert _flags() == before


def test_every_precision_of_the_settings_is_handled():
    assert set(PRECISIONS) == {"fp32", "fp32-tf32conv", "tf32", "bf16", "fp16"}
    for precision in PRECISIONS:
        with precision_context(precision, "cpu"):
            pass


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_autocast_covers_the_forward_only_where_asked(precision, dtype):
    layer = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast_region(precision, "cpu"):
        assert layer(x).dtype == dtype
    with autocast_region("fp32", "cpu"):
        assert layer(x).dtype == torch.float32
    with precision_context(precision, torch.device("cpu")):
        assert layer(x).dtype == dtype
    with precision_context(precision, "cpu", autocast=False):
        assert layer(x).dtype == torch.float32
    assert layer(x).dtype == torch.float32


def test_unknown_precision_is_named():
    with pytest.raises(ValueError, match="precision='fp8'"):
        with precision_context("fp8"):
            pass
