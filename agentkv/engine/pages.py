"""The page layout: one block of every layer (K and V, and whatever the codec keeps beside them) as one run of
bytes, so a block moves between tiers, or into a Redis value, as one contiguous copy. An MLA model's page holds one
latent + RoPE key per token and layer instead (`of_model`).

The pool's pages are rows of a uint8 slab [num_pages, page_bytes]; each layer's K and V fields are typed,
strided views of it ([num_pages, *field.shape]), so attention reads them in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentkv.codecs import KVCodec, PageField
from agentkv.kernels.attention import LayerKV
from agentkv.model.config import ModelConfig


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

    @staticmethod
    def of_model(codec: KVCodec, cfg: ModelConfig, num_layers: int, block_size: int) -> PageLayout:
        """The layout of `num_layers` of the model's layers: K and V per KV head, or for MLA (the latent page
        group) one vector a token, the latent then the RoPE key, shared by every head and stored as the codec
        stores a value (`kvcache/sizing.py` prices it so); no V fields: attention reads the latent as both."""
        if cfg.mla is None:
            return PageLayout.of(codec, num_layers, block_size, cfg.num_kv_heads, cfg.head_dim)
        return PageLayout(codec, num_layers, codec.value_fields(block_size, 1, cfg.mla.entry_dim), ())

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
            layers.append(LayerKV(self.codec, halves[0], halves[1] or halves[0], group))  # MLA: V reads K
        return layers
