"""KV codecs: how K/V are stored in pages (full precision, fp8, int8, int4), one definition per format."""

from __future__ import annotations

import torch

from agentkv.codecs.base import FullPrecision, KVCodec, PageField
from agentkv.codecs.int4 import Int4, Int4Kivi
from agentkv.codecs.scaled import Symmetric
from agentkv.kvcache.sizing import codec

__all__ = ["KVCodec", "PageField", "get_codec"]

_FULL = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def get_codec(name: str) -> KVCodec:
    """The codec called `name`: bf16, fp16, fp32, fp8, int8, int4, int4-gN (N values a group), int4-kivi."""
    spec = codec(name)  # a clear error for unknown names
    if name in _FULL:
        return FullPrecision(name, _FULL[name], spec)
    if name == "fp8":
        return Symmetric(spec, torch.float8_e4m3fn, 448.0)
    if name == "int8":
        return Symmetric(spec, torch.int8, 127.0)
    return Int4Kivi(spec) if spec.channel_keys else Int4(spec)
