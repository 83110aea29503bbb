"""Block identity: a chained hash over token ids, so a block id stands for its tokens and all before it.

The engine names its KV blocks with this and the OpenAI-log loader names trace blocks with it, so a prompt
replayed from a log and the same prompt served by the engine get the same ids. Only full blocks are named:
a partial last block is still being written by decode and is never shared.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

ROOT = 0  # the parent hash of a sequence's first block


def salt_hash(salt: str) -> int:
    """The chain's starting value for a cache namespace (tenant, model, codec): different salts never share."""
    if not salt:
        return ROOT
    return int.from_bytes(hashlib.blake2b(salt.encode(), digest_size=8).digest(), "little", signed=True)


def chain_hash(parent: int, tokens: Sequence[int] | np.ndarray) -> int:
    """The id of a block holding `tokens` after the prefix whose last block id is `parent` (signed 64-bit)."""
    h = hashlib.blake2b(parent.to_bytes(8, "little", signed=True), digest_size=8)
    h.update(np.asarray(tokens, dtype=np.int64).tobytes())
    return int.from_bytes(h.digest(), "little", signed=True)


def block_hashes(tokens: Sequence[int] | np.ndarray, block_size: int, parent: int = ROOT) -> np.ndarray:
    """Ids of every full block of `tokens`, chained from `parent` (pass salt_hash(...) to scope them)."""
    toks = np.asarray(tokens, dtype=np.int64)
    out = np.empty(len(toks) // block_size, dtype=np.int64)
    for i in range(len(out)):
        parent = chain_hash(parent, toks[i * block_size : (i + 1) * block_size])
        out[i] = parent
    return out
