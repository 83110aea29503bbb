"""Block-scaled fp8 weights, as DeepSeek-V3 (and the models that share its architecture, e.g. Kimi K2) are
published: each linear weight is float8 e4m3 codes [out, in] beside `<name>_scale_inv`, one fp32 scale per
block of `weight_block_size` (128 × 128) values, the value being code × scale ("inverse" of the quantizer's
scale). Loading dequantizes them to the model's dtype, so the model runs as with bf16 weights (and takes
bf16's memory, not fp8's)."""

from __future__ import annotations

import torch

CODES, SCALE = "", "_scale_inv"  # a packed weight's parts: the codes under its own name, and its scales
PARTS = (CODES, SCALE)


def dequantize(codes: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, ...], dtype: torch.dtype,
               ) -> torch.Tensor:
    """codes [out, in] e4m3 and scale_inv [ceil(out / b0), ceil(in / b1)] → values [out, in] in `dtype`."""
    (rows, cols), (b0, b1) = codes.shape, block
    if codes.dtype != torch.float8_e4m3fn or tuple(scale_inv.shape) != (-(-rows // b0), -(-cols // b1)):
        raise ValueError(f"fp8 codes {tuple(codes.shape)} {codes.dtype} do not match block scales "
                         f"{tuple(scale_inv.shape)} for blocks of {b0} x {b1}")
    scale = scale_inv.float().repeat_interleave(b0, 0)[:rows].repeat_interleave(b1, 1)[:, :cols]
    return (codes.float() * scale).to(dtype)
