"""The seam between the engine's block pool and wherever a tier keeps its pages.

The policy core decides which block ids live in which tier; the engine's pool carries the moves out through
one `TierStore` per tier below the GPU (host DRAM slab, local disk, Redis). A store only holds bytes: it never
decides what to keep. Pages are rows of a uint8 tensor [n, page_bytes] (one block of every layer, K and V and
a codec's scales, contiguous), so moving a block is one copy.

Blocks are keyed by `BlockKey`: a 128-bit chained hash of the whole prefix (salted by model, codec and tenant)
plus the bytes the block stands for (its parent's digest, or the salt's for a first block, and its tokens).
A store that keeps pages outside this process stores the identity beside the page and a checksum, and
verifies both when it loads: a mismatch (collision, corruption, truncation) is a miss, never served.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from agentkv.kvcache.block_hash import BlockKey  # the one block identity (its module says how keys chain)

if TYPE_CHECKING:  # the policy core names blocks with BlockKey and must not import torch
    import torch


class TierStore(ABC):
    """Batched, synchronous operations; asynchronous movement is layered on top (a worker thread or CUDA
    stream calls these). Implementations must be safe to call from one worker thread while another thread
    calls `contains`."""

    name: str
    page_bytes: int
    may_lose = False  # True: blocks may vanish on their own (Redis eviction, corruption): a load can miss
    remote = False  # True: a lookup is a network round trip that may hang (asked on the mover, with a deadline)

    @abstractmethod
    def put(self, keys: Sequence[BlockKey], pages: torch.Tensor) -> None:
        """Store pages [len(keys), page_bytes] (uint8, any device) under keys."""

    @abstractmethod
    def get(self, keys: Sequence[BlockKey], out: torch.Tensor) -> np.ndarray:
        """Load the pages of `keys` into rows of `out` [len(keys), page_bytes]; returns a bool mask of rows
        found and verified. Rows that are False hold nothing usable."""

    @abstractmethod
    def drop(self, keys: Sequence[BlockKey]) -> None:
        """Forget keys (absent ones are ignored)."""

    @abstractmethod
    def contains(self, keys: Sequence[BlockKey]) -> np.ndarray: ...

    def touch(self, keys: Sequence[BlockKey]) -> None:
        """The keys were used now (a store that evicts by recency keeps them longer; others ignore it)."""

    def close(self) -> None:
        """Release files, connections, pinned memory."""
