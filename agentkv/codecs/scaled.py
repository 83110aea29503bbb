"""fp8 (e4m3) and int8 KV: x ≈ code × scale, one fp16 scale per token and head, stored in the page.

A per-token scale needs no calibration and follows outlier tokens (the attention-sink token's keys are often
10-100× the rest), at 2 bytes per head vector: 1.6% of the data at head_dim 128. The scale is the vector's
absolute max over the format's largest code, rounded up to fp16 so that max still fits.
"""

from __future__ import annotations

import torch

from agentkv.codecs.base import KVCodec, PageField, fp16_up, split_slots
from agentkv.kvcache.sizing import CodecSpec


class Symmetric(KVCodec):
    """Codes in `store` (float8_e4m3fn or int8) up to ±`qmax`; int8 codes are rounded to integers."""

    def __init__(self, spec: CodecSpec, store: torch.dtype, qmax: float) -> None:
        self.name, self.spec, self.store, self.qmax = spec.name, spec, store, qmax
        self.integer = not store.is_floating_point

    def fields(self, block_size: int, kv_heads: int, head_dim: int) -> tuple[PageField, ...]:
        self.spec.group_size(head_dim)
        return (PageField("scale", torch.float16, (block_size, kv_heads, 1)),
                PageField("data", self.store, (block_size, kv_heads, head_dim)))

    def encode_into(self, fields: dict[str, torch.Tensor], slots: torch.Tensor, x: torch.Tensor) -> None:
        x = x.to(torch.float32, copy=True)  # worked on in place below
        lo, hi = torch.aminmax(x, dim=-1, keepdim=True)
        scale = fp16_up(torch.maximum(hi, -lo) / self.qmax)
        code = x.div_(torch.where(scale > 0, scale, 1.0)).clamp_(-self.qmax, self.qmax)
        if self.integer:
            code.round_()
        p, o = split_slots(fields, slots)
        fields["scale"][p, o] = scale.half()
        fields["data"][p, o] = code.to(self.store)

    def decode(self, fields: dict[str, torch.Tensor], pages: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return fields["data"][pages].float().mul_(fields["scale"][pages].float()).to(dtype)

    def bound(self, x: torch.Tensor, keys: bool = False, block_size: int = 16) -> torch.Tensor:
        """int8: half a step, scale / 2. e4m3: half an ulp of a 3-bit mantissa (2^-4 relative) above the
        normal range, 2^-10 × scale in the subnormal range."""
        x = x.float()
        scale = x.abs().amax(-1, keepdim=True) / self.qmax * (1 + 2.0**-10) + 2.0**-24
        if self.integer:
            return (scale * 0.5 * (1 + 2.0**-12)).expand_as(x)
        return x.abs() * 2.0**-4 + scale * 2.0**-10
