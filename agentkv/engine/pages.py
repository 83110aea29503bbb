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
    fields: tuple[PageField, ...]  # one layer's K (or V) fields, in page order

    @staticmethod
    def of(codec: KVCodec, num_layers: int, block_size: int, kv_heads: int, head_dim: int) -> PageLayout:
        return PageLayout(codec, num_layers, codec.fields(block_size, kv_heads, head_dim))

    @property
    def page_bytes(self) -> int:
        return self.num_layers * 2 * sum(f.nbytes for f in self.fields)

    def views(self, slab: torch.Tensor) -> list[LayerKV]:
        """Typed views of every layer's K and V fields over a slab [num_pages, page_bytes] (uint8)."""
        off = 0
        layers = []
        for _ in range(self.num_layers):
            halves = []
            for _kv in range(2):
                fields = {}
                for f in self.fields:
                    fields[f.name] = slab[:, off : off + f.nbytes].view(f.dtype).view(slab.shape[0], *f.shape)
                    off += f.nbytes
                halves.append(fields)
            layers.append(LayerKV(self.codec, halves[0], halves[1]))
        return layers
