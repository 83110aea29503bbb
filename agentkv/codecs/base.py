"""How one layer's K (or V) is laid out in a KV page, and how tokens get in and out of it.

A page is the unit the engine stores and moves: one block of `block_size` tokens, K and V of every layer, plus
whatever a codec keeps beside its data (scales, zero points), as one run of bytes. A codec describes its part
of a page as `PageField`s; the pool places them back to back (layer 0 K fields, layer 0 V fields, layer 1 …)
and hands the codec typed views of its fields across all pages: `fields[name]` is a tensor
[num_pages, *field.shape]. Bytes per page therefore equal `num_layers × 2 × Σ field.nbytes`, which is exactly
`kvcache.sizing.kv_bytes_per_block` for the codec's `CodecSpec` (tests assert it for every codec).
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

    @abstractmethod
    def encode_into(self, fields: dict[str, torch.Tensor], slots: torch.Tensor, x: torch.Tensor) -> None:
        """Store x [T, kv_heads, head_dim] at `slots` [T]."""

    @abstractmethod
    def decode(self, fields: dict[str, torch.Tensor], pages: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Pages `pages` [n] as [n, block_size, kv_heads, head_dim] in `dtype`."""


class FullPrecision(KVCodec):
    """bf16 / fp16 / fp32 pages: the values themselves (fp32 is for exact tests against references)."""

    def __init__(self, name: str, dtype: torch.dtype, spec: CodecSpec) -> None:
        self.name, self.dtype, self.spec = name, dtype, spec

    def fields(self, block_size: int, kv_heads: int, head_dim: int) -> tuple[PageField, ...]:
        return (PageField("data", self.dtype, (block_size, kv_heads, head_dim)),)

    def encode_into(self, fields: dict[str, torch.Tensor], slots: torch.Tensor, x: torch.Tensor) -> None:
        data = fields["data"]
        bs = data.shape[1]
        data[slots // bs, slots % bs] = x.to(self.dtype)

    def decode(self, fields: dict[str, torch.Tensor], pages: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return fields["data"][pages].to(dtype)
