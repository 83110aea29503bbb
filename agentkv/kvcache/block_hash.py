"""Block identity, one chain: a block stands for its tokens and everything before them.

A block's digest is blake2b over (its parent's digest, its tokens as int32), chained from a namespace's root.
Two widths of the same chain:
- 64-bit ids (`block_hashes`): what traces, the router and the replay's prediction compare (numpy int64);
  the OpenAI-log loader and the Ray gateway name a prompt's blocks with them, so a prompt replayed from a log
  and the same prompt routed to a replica get the same ids;
- 128-bit keys (`BlockKey`, `block_key`, `chain_keys`): what the engine names its KV pages with and the stores
  below the GPU keep them under; collision-resistant, and carrying the identity (parent digest + tokens) a
  loader checks before it serves.
Only full blocks are named: a partial last block is still being written by decode and is never shared.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KEY_BYTES = 16
ROOT = 0  # the parent id of a sequence's first block (the empty namespace)


@dataclass(slots=True, frozen=True)
class BlockKey:
    digest: bytes  # 16 bytes: blake2b-128 over (parent digest, tokens), chained from the namespace salt
    identity: bytes  # parent digest (16 bytes) + tokens (int32 little-endian): what the block stands for


def _link(parent: bytes, tokens: Sequence[int] | np.ndarray, size: int) -> tuple[bytes, bytes]:
    """(digest, identity) of the block holding `tokens` after the block whose digest is `parent`."""
    identity = parent + np.asarray(tokens, dtype="<i4").tobytes()
    return hashlib.blake2b(identity, digest_size=size, person=b"agentkv-blk").digest(), identity


def namespace_digest(salt: str, size: int = KEY_BYTES) -> bytes:
    """The chain's root for a namespace, e.g. 'model-path|bf16|tenant-a': different salts never share a block."""
    return hashlib.blake2b(salt.encode(), digest_size=size, person=b"agentkv-ns").digest()


def block_key(parent: bytes, tokens: Sequence[int] | np.ndarray) -> BlockKey:
    """The key of the block holding `tokens` after the prefix whose last key digest is `parent`."""
    return BlockKey(*_link(parent, tokens, KEY_BYTES))


def chain_keys(tokens: Sequence[int] | np.ndarray, block_size: int, parent: bytes) -> list[BlockKey]:
    """Keys of every full block of `tokens`, chained from `parent` (a namespace digest)."""
    out = []
    for i in range(len(tokens) // block_size):
        key = block_key(parent, tokens[i * block_size : (i + 1) * block_size])
        out.append(key)
        parent = key.digest
    return out


def salt_hash(salt: str) -> int:
    """The 64-bit chain's root for a namespace (tenant, model, codec): different salts never share an id."""
    return int.from_bytes(namespace_digest(salt, 8), "little", signed=True) if salt else ROOT


def block_hashes(tokens: Sequence[int] | np.ndarray, block_size: int, parent: int = ROOT) -> np.ndarray:
    """64-bit ids of every full block of `tokens`, chained from `parent` (salt_hash(...) scopes them; a block's
    id continues its chain)."""
    toks = np.asarray(tokens, dtype=np.int64)
    out = np.empty(len(toks) // block_size, dtype=np.int64)
    digest = parent.to_bytes(8, "little", signed=True)
    for i in range(len(out)):
        digest = _link(digest, toks[i * block_size : (i + 1) * block_size], 8)[0]
        out[i] = int.from_bytes(digest, "little", signed=True)
    return out
