"""MXFP4 weights, as gpt-oss is published: each run of 32 values is 32 4-bit floats (e2m1, two a byte, the
low nibble first) sharing one power-of-two scale (a uint8 exponent biased by 127). The checkpoint keeps an
expert tensor as `<name>_blocks` [*rows, groups, 16] and `<name>_scales` [*rows, groups]; loading
dequantizes it to the layout the bf16 checkpoints have ([experts, in, out]), so the model runs as with bf16.
"""

from __future__ import annotations

import torch

E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
SUFFIXES = ("_blocks", "_scales")


def dequantize(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[experts, out, groups, 16] codes and [experts, out, groups] exponents → [experts, in, out] values."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8 or blocks.shape[:-1] != scales.shape:
        raise ValueError(f"MXFP4 blocks {tuple(blocks.shape)} {blocks.dtype} do not match scales "
                         f"{tuple(scales.shape)} {scales.dtype}")
    lut = torch.tensor(E2M1, dtype=torch.float32, device=blocks.device)
    values = torch.stack([lut[(blocks & 0x0F).long()], lut[(blocks >> 4).long()]], dim=-1).flatten(-2)
    values = torch.ldexp(values, scales.to(torch.int32)[..., None] - 127)
    return values.flatten(-2).transpose(1, 2).contiguous().to(dtype)
