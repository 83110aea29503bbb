"""How many bytes KV takes: the model's KV shape times the codec's bits, scales included — the one definition.

The policy core, the simulator and the report size tiers with these figures, and the engine's pages
(agentkv.codecs) are laid out from the same `CodecSpec`, so what is priced is what is stored, byte for byte
(tests/codecs asserts it for every codec and several model shapes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from agentkv.catalog import ModelSpec

BLOCK_SIZE = 16  # the engine's default block size, for per-token figures of codecs whose bytes depend on it
BLOCK_TAG_BYTES = 4  # int4-kivi: one int32 per block's keys telling whether they are sealed (see codecs.int4)


@dataclass(slots=True, frozen=True)
class CodecSpec:
    """A KV storage format: `bits` per value, plus fp16 scales (and offsets) stored in the page beside the
    data, `scale_bytes` per group of `group` values of a head vector (group 0: one group per head vector, i.e.
    per token and head). `channel_keys`: keys get their scales per channel per block instead (KIVI)."""

    name: str
    bits: int
    scale_bytes: int = 0  # per group: 2 for a symmetric fp16 scale, 4 for an fp16 scale and offset
    group: int = 0
    channel_keys: bool = False

    def group_size(self, dim: int) -> int:
        g = self.group or dim
        if dim % g or dim * self.bits % 8:
            raise ValueError(f"KV codec {self.name}: a head of {dim} values does not split into groups of {g} "
                             f"at {self.bits} bits into whole bytes")
        return g

    def vector_bytes(self, dim: int) -> int:
        """One token's K (or V) of one head: packed values and its groups' scales."""
        return dim * self.bits // 8 + dim // self.group_size(dim) * self.scale_bytes

    def half_block_bytes(self, block_size: int, heads: int, dim: int, keys: bool) -> int:
        """One layer's K (keys=True) or V of one block, as the engine's page stores it."""
        if keys and self.channel_keys:
            return heads * (block_size * dim * self.bits // 8 + dim * self.scale_bytes) + BLOCK_TAG_BYTES
        return block_size * heads * self.vector_bytes(dim)


CODECS: dict[str, CodecSpec] = {
    "bf16": CodecSpec("bf16", 16),
    "fp16": CodecSpec("fp16", 16),
    "fp32": CodecSpec("fp32", 32),  # exact, for tests against references
    "fp8": CodecSpec("fp8", 8, scale_bytes=2),  # e4m3, an fp16 scale per token and head
    "int8": CodecSpec("int8", 8, scale_bytes=2),  # symmetric, an fp16 scale per token and head
    "int4": CodecSpec("int4", 4, scale_bytes=4),  # asymmetric, fp16 scale + offset per token and head
    "int4-kivi": CodecSpec("int4-kivi", 4, scale_bytes=4, channel_keys=True),  # keys per channel per block
}
_GROUPED = re.compile(r"int4-g(\d+)")  # int4-g32: asymmetric int4, a scale and offset per 32 values


def codec(name: str) -> CodecSpec:
    if name in CODECS:
        return CODECS[name]
    m = _GROUPED.fullmatch(name)
    if m and int(m.group(1)) > 0:
        return CodecSpec(name, 4, scale_bytes=4, group=int(m.group(1)))
    raise ValueError(f"unknown KV codec '{name}' (known: {', '.join(CODECS)}, int4-gN)")


@lru_cache(maxsize=256)
def kv_bytes_per_block(model: ModelSpec, codec_spec: CodecSpec, block_size: int) -> int:
    """K and V of every layer (or MLA's one latent + rope key per layer) for one block: one engine page."""
    if model.is_mla:
        return model.layers * codec_spec.half_block_bytes(block_size, 1, model.mla_latent + model.mla_rope_dim,
                                                          keys=False)
    k = codec_spec.half_block_bytes(block_size, model.kv_heads, model.head_dim, keys=True)
    v = codec_spec.half_block_bytes(block_size, model.kv_heads, model.head_dim, keys=False)
    return model.layers * (k + v)


def kv_bytes_per_token(model: ModelSpec, codec_spec: CodecSpec, block_size: int = BLOCK_SIZE) -> float:
    """A block's bytes over its tokens (whole bytes for every codec but int4-kivi, whose key scales are per
    block)."""
    return kv_bytes_per_block(model, codec_spec, block_size) / block_size
