"""Tokens per KV block when the user names none: the usual 16, or what the model's pages need.

A DeepSeek-V4 page keeps whole compressed entries (engine/compressed.py), so its block size must be a multiple
of every compression ratio; the published V4-Flash compresses HCA layers 128 to 1, where 16 cannot work. As vLLM
takes an attention backend's required block size when `--block-size` is not given, the engine then takes the
least multiple of the ratios that is at least the usual default, and says why. A size the user gives is kept
as given (a V4 page refuses one that does not fit, in one line naming the flag).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agentkv.model.deepseek_config import CompressedShape

DEFAULT_BLOCK_SIZE = 16


@dataclass(slots=True, frozen=True)
class BlockSize:
    tokens: int
    why: str  # what the start-up line says when the model chose it ("" when given or the usual default)


def block_size_for(v4: CompressedShape | None, given: int | None) -> BlockSize:
    """`given` as is; otherwise the usual default, rounded up to a multiple of V4's compression ratios (`v4`:
    the model config's DeepSeek-V4 shape, None for every other family)."""
    if given is not None:
        return BlockSize(given, "")
    ratios = sorted({v4.ratio_of(i) for i, k in enumerate(v4.kinds) if k != "sliding"}) if v4 else []
    step = math.lcm(*ratios) if ratios else 1
    tokens = -(-DEFAULT_BLOCK_SIZE // step) * step
    if tokens == DEFAULT_BLOCK_SIZE:
        return BlockSize(tokens, "")
    return BlockSize(tokens, f"block size {tokens}: a multiple of V4's compression ratios "
                             f"({', '.join(map(str, ratios))})")
