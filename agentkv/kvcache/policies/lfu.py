"""Frequency-aware: LFU with dynamic aging (LFUDA), recency breaking ties.

A block's key is the cache's age plus how often it was used; the age rises to the key of each eviction, so
blocks that were popular long ago do not squat forever (the weakness of plain LFU that ARC also fixes).
"""

from __future__ import annotations

import numpy as np

from agentkv.kvcache.policy import AccessContext, Policy


class LFU(Policy):
    name = "lfu"

    def __init__(self) -> None:
        self.count = np.zeros(0, dtype=np.float64)
        self.age = 0.0
        self.releases = 0

    def grow(self, n_slots: int) -> None:
        self.count = np.concatenate([self.count, np.zeros(n_slots - len(self.count))])

    def forget(self, slots: np.ndarray) -> None:
        self.count[slots] = 0

    def on_release(self, slots: np.ndarray, depth: np.ndarray, ctx: AccessContext) -> np.ndarray:
        self.count[slots] += 1
        self.releases += 1
        recency = self.releases / (self.releases + 1.0)  # in [0, 1): orders equal counts by recency
        return self.age + self.count[slots] + recency

    def on_evict(self, keys: np.ndarray) -> None:
        if len(keys):
            self.age = max(self.age, float(np.max(keys)))
