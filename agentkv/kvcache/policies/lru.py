"""LRU with tail-first eviction: what vLLM's and SGLang's prefix caches do, and the baseline here.

A finished request's blocks become evictable together; among them the tail goes first (vLLM frees a
request's blocks in reverse order, SGLang evicts radix-tree leaves), so the shared head survives longest.
"""

from __future__ import annotations

import numpy as np

from agentkv.kvcache.policy import AccessContext, Policy


class LRU(Policy):
    name = "lru"

    def __init__(self) -> None:
        self.releases = 0

    def on_release(self, slots: np.ndarray, depth: np.ndarray, ctx: AccessContext) -> float:
        self.releases += 1  # a counter, not the clock: simultaneous requests still get a strict order
        return float(self.releases)  # one key for the chain: the core gives it to every block
