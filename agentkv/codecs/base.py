"""How one layer's K (or V) is laid out in a KV page, and how tokens get in and out of it.

A page is the unit the engine stores and moves: one block of `block_size` tokens, K and V of every layer, plus
whatever a codec keeps beside its data (scales, offsets), as one run of bytes. A codec describes its part
of a page as `PageField`s; the pool places them back to back (layer 0 K fields, layer 0 V fields, layer 1 …)
and hands the codec typed views of its fields across all pages: `fields[name]` is a tensor
[num_pages, *field.shape]. Bytes per page therefore equal `num_layers × Σ (key + value field bytes)`, which is
exactly `kvcache.sizing.kv_bytes_per_block` for the codec's `CodecSpec` (tests assert it for every codec).
Each field starts at a multiple of its element size and every half's bytes are a multiple of its widest
element, so each typed view of the byte slab is aligned. The first field is [block_size, …] (LayerKV reads the
block size from it).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from agentkv.kvcache.sizing import CodecSpec


@dataclass(slots=True, frozen=True)
class PageField:
    """One array a codec stores per block, e.g. ('data', int8, (block_size, kv_heads, head_dim))."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


class KVCodec(ABC):
    """A KV storage format. `encode_into` writes new tokens at flat slots (page * block_size + offset);
    `decode` returns whole pages in the compute dtype. Both act on one layer's K or V."""

    name: str
    spec: CodecSpec

    @abstractmethod
    def fields(self, block_size: int, kv_heads: int, head_dim: int) -> tuple[PageField, ...]: ...

    def key_fields(self, block_size: int, kv_heads: int, head_dim: int) -> tuple[PageField, ...]:
        """A layer's K fields; differ from its V fields only where the codec treats keys apart (int4-kivi)."""
        return self.fields(block_size, kv_heads, head_dim)

    def value_fields(self, block_size: int, kv_heads: int, head_dim: int) -> tuple[PageField, ...]:
        return self.fields(block_size, kv_heads, head_dim)

    @abstractmethod
    def encode_into(self, fields: dict[str, torch.Tensor], slots: torch.Tensor, x: torch.Tensor) -> None:
        """Store x [T, kv_heads, head_dim] at `slots` [T]."""

    @abstractmethod
    def decode(self, fields: dict[str, torch.Tensor], pages: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Pages `pages` [n] as [n, block_size, kv_heads, head_dim] in `dtype`."""

    @abstractmethod
    def bound(self, x: torch.Tensor, keys: bool = False, block_size: int = 16) -> torch.Tensor:
        """The largest |x - decode(encode(x))| (decoded in fp32) the format allows, element by element, for
        x [T, kv_heads, head_dim] written as T consecutive tokens from the start of a block. The property
        tests hold every codec to it, and engine tests derive their logit tolerances from it."""


def fp16_up(x: torch.Tensor) -> torch.Tensor:
    """The smallest fp16 value >= x (as fp32): a scale rounded so the largest value still fits the codes."""
    h = x.half()
    return torch.where(h.float() < x, torch.nextafter(h, torch.full_like(h, math.inf)), h).float()


def fp16_down(x: torch.Tensor) -> torch.Tensor:
    """The largest fp16 value <= x (as fp32): an offset rounded so the smallest value is still covered."""
    h = x.half()
    return torch.where(h.float() > x, torch.nextafter(h, torch.full_like(h, -math.inf)), h).float()


def split_slots(fields: dict[str, torch.Tensor], slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(page, offset) of each flat slot."""
    bs = fields["data"].shape[1]
    return slots // bs, slots % bs


_HALF_ULP = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 0.0}


class FullPrecision(KVCodec):
    """bf16 / fp16 / fp32 pages: the values themselves (fp32 is for exact tests against references)."""

    def __init__(self, name: str, dtype: torch.dtype, spec: CodecSpec) -> None:
        self.name, self.dtype, self.spec = name, dtype, spec

    def fields(self, block_size: int, kv_heads: int, head_dim: int) -> tuple[PageField, ...]:
        return (PageField("data", self.dtype, (block_size, kv_heads, head_dim)),)

    def encode_into(self, fields: dict[str, torch.Tensor], slots: torch.Tensor, x: torch.Tensor) -> None:
        p, o = split_slots(fields, slots)
        fields["data"][p, o] = x.to(self.dtype)

    def decode(self, fields: dict[str, torch.Tensor], pages: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return fields["data"][pages].to(dtype)

    def bound(self, x: torch.Tensor, keys: bool = False, block_size: int = 16) -> torch.Tensor:
        """Rounding to the storage type: half an ulp (fp16 subnormals: 2^-25 absolute)."""
        tiny = 2.0**-25 if self.dtype == torch.float16 else 0.0
        return x.float().abs() * _HALF_ULP[self.dtype] + tiny
