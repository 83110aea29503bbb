"""The page layout: one block of every layer (K and V, and whatever the codec keeps beside them) as one run of
bytes, so a block moves between tiers, or into a Redis value, as one contiguous copy.

The pool's pages are rows of a uint8 slab [num_pages, page_bytes]; each layer's K and V fields are typed,
strided views of it ([num_pages, *field.shape]), so attention reads them in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentkv.codecs import KVCodec, PageField
from agentkv.kernels.attention import LayerKV


@dataclass(slots=True, frozen=True)
class PageLayout:
    codec: KVCodec
    num_layers: int
    k_fields: tuple[PageField, ...]  # one layer's K fields, in page order
    v_fields: tuple[PageField, ...]  # then its V fields (they differ where keys are treated apart: int4-kivi)

    @staticmethod
    def of(codec: KVCodec, num_layers: int, block_size: int, kv_heads: int, head_dim: int) -> PageLayout:
        return PageLayout(codec, num_layers, codec.key_fields(block_size, kv_heads, head_dim),
                          codec.value_fields(block_size, kv_heads, head_dim))

    @property
    def page_bytes(self) -> int:
        return self.num_layers * sum(f.nbytes for f in (*self.k_fields, *self.v_fields))

    def views(self, slab: torch.Tensor, group: int = 0) -> list[LayerKV]:
        """Typed views of every layer's K and V fields over a slab [num_pages, page_bytes] (uint8), pages of
        page group `group` (the attention metadata's tables for it)."""
        off = 0
        layers = []
        for _ in range(self.num_layers):
            halves = []
            for half in (self.k_fields, self.v_fields):
                fields = {}
                for f in half:
                    fields[f.name] = slab[:, off : off + f.nbytes].view(f.dtype).view(slab.shape[0], *f.shape)
                    off += f.nbytes
                halves.append(fields)
            layers.append(LayerKV(self.codec, halves[0], halves[1], group))
        return layers
