"""How many bytes a token's KV takes: the model's KV shape times the codec's bits, scales included.

The policy core and the simulator size tiers with this; the tensor-side codecs (agentkv.codecs) implement the
same formats, so their storage matches these figures byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from agentkv.catalog import ModelSpec


@dataclass(slots=True, frozen=True)
class CodecSpec:
    """A KV storage format. Scales (and zero points) are fp16, one set per `group` values of a head vector;
    group 0 means a per-tensor scale (negligible bytes)."""

    name: str
    bits: int
    scale_bytes: int = 0  # per group: 2 for a symmetric fp16 scale, 4 for asymmetric scale + zero point
    group: int = 0

    def bytes_per_vector(self, dim: int) -> float:
        groups = dim / self.group if self.group else 0.0
        return dim * self.bits / 8 + groups * self.scale_bytes


CODECS: dict[str, CodecSpec] = {
    "bf16": CodecSpec("bf16", 16),
    "fp16": CodecSpec("fp16", 16),
    "fp8": CodecSpec("fp8", 8),  # e4m3 with per-tensor scales, as vLLM and SGLang store it
    "int8": CodecSpec("int8", 8, scale_bytes=2, group=128),  # symmetric, a scale per token and head
    "int4": CodecSpec("int4", 4, scale_bytes=4, group=128),  # asymmetric, scale + zero per token and head
}


def codec(name: str) -> CodecSpec:
    if name not in CODECS:
        raise ValueError(f"unknown KV codec '{name}' (known: {', '.join(CODECS)})")
    return CODECS[name]


@lru_cache(maxsize=64)
def kv_bytes_per_token(model: ModelSpec, codec_spec: CodecSpec) -> float:
    """K and V of every layer (or MLA's one latent + rope key per layer) for one token."""
    if model.is_mla:
        return model.layers * codec_spec.bytes_per_vector(model.mla_latent + model.mla_rope_dim)
    return model.layers * 2 * model.kv_heads * codec_spec.bytes_per_vector(model.head_dim)


def kv_bytes_per_block(model: ModelSpec, codec_spec: CodecSpec, block_size: int) -> int:
    return round(kv_bytes_per_token(model, codec_spec) * block_size)
