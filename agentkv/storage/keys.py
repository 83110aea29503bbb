"""Collision-resistant block keys for pages kept outside the process (disk, Redis).

A key is a blake2b-128 digest chained over the whole prefix and salted by namespace (model, codec, tenant), so
equal keys mean equal prefixes with overwhelming probability; the identity stored beside the page (parent
digest + tokens) lets a loader check even that before it serves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from agentkv.storage.base import BlockKey

DIGEST_BYTES = 16


def namespace_digest(salt: str) -> bytes:
    """The chain's root for a namespace, e.g. 'model-path|bf16|tenant-a': different salts never share a key."""
    return hashlib.blake2b(salt.encode(), digest_size=DIGEST_BYTES, person=b"agentkv-ns").digest()


def block_key(parent: bytes, tokens: Sequence[int] | np.ndarray) -> BlockKey:
    """The key of the block holding `tokens` after the prefix whose last key digest is `parent`."""
    identity = parent + np.asarray(tokens, dtype="<i4").tobytes()
    return BlockKey(hashlib.blake2b(identity, digest_size=DIGEST_BYTES, person=b"agentkv-blk").digest(), identity)


def chain_keys(tokens: Sequence[int] | np.ndarray, block_size: int, parent: bytes) -> list[BlockKey]:
    """Keys of every full block of `tokens`, chained from `parent` (a namespace digest)."""
    out = []
    for i in range(len(tokens) // block_size):
        key = block_key(parent, tokens[i * block_size : (i + 1) * block_size])
        out.append(key)
        parent = key.digest
    return out
