"""KV codecs: how K/V are stored in pages (full precision, fp8, int8, int4), one definition per format."""

from __future__ import annotations

import torch

from agentkv.codecs.base import FullPrecision, KVCodec, PageField
from agentkv.kvcache.sizing import CodecSpec, codec

__all__ = ["KVCodec", "PageField", "get_codec"]

_FULL = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def get_codec(name: str) -> KVCodec:
    """The codec called `name` ('bf16', 'fp16', 'fp32', ...)."""
    if name in _FULL:
        spec = codec(name) if name != "fp32" else CodecSpec("fp32", 32)
        return FullPrecision(name, _FULL[name], spec)
    codec(name)  # raises a clear error for unknown names
    raise ValueError(f"KV codec '{name}' is not implemented in the engine yet")
