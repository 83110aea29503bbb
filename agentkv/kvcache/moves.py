"""What the policy core returns as data: a request's `Grant` (its hits), the `MoveBatch`es its caller carries
out (the engine's page pool, the simulator's clock), and the counters it keeps (`CacheStats`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class MoveBatch:
    """Blocks to move between tiers. kind: 'promote' (copy src→0), 'demote' (copy src→dst, then free src),
    'write' (write-through copy 0→dst), 'drop' (free in src; dst = -1)."""

    kind: str
    src: int
    dst: int
    blocks: np.ndarray


@dataclass(slots=True)
class Grant:
    hit_blocks: int  # leading run of the request's ids that was cached
    hit_tiers: np.ndarray  # the tier each of those blocks was found in
    hits_per_tier: np.ndarray  # how many came from each tier
    moves: list[MoveBatch]


@dataclass(slots=True)
class CacheStats:
    n_tiers: int
    hit_blocks: np.ndarray = field(init=False)  # per source tier
    promoted: np.ndarray = field(init=False)  # per source tier
    demoted: np.ndarray = field(init=False)  # per source tier
    freed: np.ndarray = field(init=False)  # per tier: evicted where a lower tier still holds a copy
    dropped: np.ndarray = field(init=False)  # per tier: evicted from the cache altogether
    written: int = 0  # write-through copies
    prefetched: int = 0
    lookups: int = 0
    refused: int = 0  # acquires that could not make room

    def __post_init__(self) -> None:
        z = lambda: np.zeros(self.n_tiers, dtype=np.int64)  # noqa: E731
        self.hit_blocks, self.promoted, self.demoted, self.freed, self.dropped = z(), z(), z(), z(), z()
