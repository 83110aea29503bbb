"""How many bytes KV takes: the model's KV shape times the codec's bits, scales included — the one definition.

The policy core, the simulator and the report size tiers with these figures, and the engine's pages
(agentkv.codecs) are laid out from the same `CodecSpec`, so what is priced is what is stored, byte for byte
(tests/codecs asserts it for every codec and several model shapes).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache

from agentkv.catalog import LayerGroup, ModelSpec

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


INDEX_SCALE_BYTES = 4  # a sparse indexer's key per entry: its values and an fp32 scale (vLLM's DSA layout)
GROWING = ("full", "mla", "compressed")  # kinds whose KV grows with the context; the others keep a bounded state


def entry_bytes(g: LayerGroup, model: ModelSpec, codec_spec: CodecSpec, block_size: int, tp: int = 1) -> float:
    """One layer's bytes per entry (a token; for compressed layers, one compressed entry) across `tp` ranks,
    replicas included: each rank keeps ceil(kv_heads / tp) heads, and a vector shared by all heads (MLA's
    latent, a compressed K=V) on every rank."""
    dim, heads = g.head_dim or model.head_dim, g.kv_heads or model.kv_heads
    if g.kind == "linear":
        return 0.0
    if g.kind == "mla":
        data = tp * codec_spec.half_block_bytes(block_size, 1, g.latent + g.rope, keys=False)
    elif g.kind == "compressed":
        data = tp * codec_spec.half_block_bytes(block_size, heads, dim, keys=False)
    else:
        stored = tp * -(-heads // tp)
        data = codec_spec.half_block_bytes(block_size, stored, dim, keys=False)
        if not g.shared_kv:
            data += codec_spec.half_block_bytes(block_size, stored, dim, keys=True)
    return data / block_size + index_bytes(g, tp)


def index_bytes(g: LayerGroup, tp: int = 1) -> float:
    """The sparse indexer's key per entry (fp8: 132 B for 128 values; V4's fp4: 68 B), kept beside the KV on every
    rank."""
    return tp * (g.index_dim * g.index_bits / 8 + INDEX_SCALE_BYTES) if g.index_dim else 0.0


def raw_bytes(g: LayerGroup, model: ModelSpec, codec_spec: CodecSpec, block_size: int, tp: int = 1) -> float:
    """Per token of a layer's bounded window: a sliding or chunked layer's K and V, a compressed layer's raw
    recent tokens (its shared vector, uncompressed)."""
    if g.kind in ("sliding", "chunked"):
        return entry_bytes(g, model, codec_spec, block_size, tp)
    if g.kind == "compressed" and g.window:
        return entry_bytes(g, model, codec_spec, block_size, tp) - index_bytes(g, tp)
    return 0.0


@lru_cache(maxsize=256)
def kv_bytes_per_block(model: ModelSpec, codec_spec: CodecSpec, block_size: int, tp: int = 1) -> int:
    """One block of the layers whose KV grows with the context (full, MLA, compressed: one entry per `ratio`
    tokens), across `tp` ranks: one engine page, the unit the policy core counts and shares. Sliding, chunked
    and linear layers keep a bounded state per sequence instead (`state_bytes`)."""
    total = sum(g.layers * entry_bytes(g, model, codec_spec, block_size, tp) * block_size / g.ratio
                for g in model.groups if g.kind in GROWING)
    return math.ceil(total)


@lru_cache(maxsize=256)
def state_bytes(model: ModelSpec, codec_spec: CodecSpec, block_size: int = BLOCK_SIZE, tp: int = 1) -> float:
    """What a running sequence keeps whatever its length, at most: a sliding layer's last `window` tokens, a
    chunked layer's current chunk, a compressed layer's raw window and its compressor's partial window, a linear
    layer's state (split by head)."""
    return sum(g.layers * (g.window * raw_bytes(g, model, codec_spec, block_size, tp) + g.state_bytes)
               for g in model.groups)


def kv_bytes(model: ModelSpec, codec_spec: CodecSpec, context: int, tp: int = 1,
             block_size: int = BLOCK_SIZE) -> float:
    """KV of one sequence at `context` tokens, every layer by its kind, across `tp` ranks."""
    total = 0.0
    for g in model.groups:
        per = entry_bytes(g, model, codec_spec, block_size, tp)
        if g.kind in ("full", "mla"):
            total += g.layers * per * context
        elif g.kind == "compressed":
            total += g.layers * (per * (context // g.ratio)
                                 + raw_bytes(g, model, codec_spec, block_size, tp) * min(context, g.window))
        elif g.kind == "linear":
            total += g.layers * g.state_bytes
        else:
            total += g.layers * per * min(context, g.window)
    return total


def kv_bytes_per_token(model: ModelSpec, codec_spec: CodecSpec, block_size: int = BLOCK_SIZE) -> float:
    """A block's bytes over its tokens: what each further token of context adds (whole bytes for every codec but
    int4-kivi, whose key scales are per block; fractional for compressed layers)."""
    return kv_bytes_per_block(model, codec_spec, block_size) / block_size
