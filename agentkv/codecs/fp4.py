"""fp4 (e2m1) vectors with one fp32 scale each: how DeepSeek-V4's lightning-indexer keys sit in a page, as
`kvcache/sizing.py` prices them (`index_bytes`: dim / 2 bytes of codes, two per byte, and a 4-byte scale).

The indexer only ranks entries (its keys pick the top k a CSA query attends; attention reads the compressed
entries themselves), so 4 bits a value is what V4 publishes for it. One field per entry, bytes only: the codes,
then the scale's 4 bytes, so the field never needs an aligned fp32 view of the page slab.
"""

from __future__ import annotations

import torch

from agentkv.codecs.base import PageField

E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # the magnitudes of e2m1; bit 3 of a code is the sign
_EDGES = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)  # midpoints between them: a value rounds to the nearest


def fp4_field(entries: int, dim: int) -> PageField:
    """A page's indexer keys: `entries` vectors of `dim` values (dim even)."""
    if dim % 2:
        raise ValueError(f"fp4 keys pack two values a byte: index_head_dim {dim} is odd")
    return PageField("index", torch.uint8, (entries, dim // 2 + 4))


def fp4_encode(x: torch.Tensor) -> torch.Tensor:
    """x [n, dim] → [n, dim/2 + 4] bytes: codes of x / scale (scale = max |x| / 6, so the largest is ±6)."""
    x = x.float()
    scale = x.abs().amax(-1, keepdim=True) / E2M1[-1]
    scaled = (x / torch.where(scale > 0, scale, 1.0)).abs()
    code = torch.bucketize(scaled, torch.tensor(_EDGES, device=x.device)).to(torch.uint8)
    code |= (x < 0).to(torch.uint8) << 3
    packed = code[:, 0::2] | (code[:, 1::2] << 4)
    return torch.cat([packed, scale.view(torch.uint8).view(x.shape[0], 4)], dim=-1)


def fp4_decode(stored: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[..., dim/2 + 4] bytes → [..., dim] values in `dtype`."""
    packed, scale = stored[..., :-4], stored[..., -4:].contiguous().view(torch.float32)
    codes = torch.stack([packed & 15, packed >> 4], dim=-1).flatten(-2).long()
    grid = torch.tensor(E2M1, device=stored.device)
    values = grid[codes & 7] * torch.where(codes >= 8, -1.0, 1.0)
    return (values * scale).to(dtype)


def fp4_round_trip(x: torch.Tensor) -> torch.Tensor:
    """x as the page gives it back: what a reference must rank by to pick the engine's top k."""
    shape = x.shape
    return fp4_decode(fp4_encode(x.reshape(-1, shape[-1])), x.dtype).view(shape)
