"""How the policy core ranks blocks for eviction, and reads which tiers hold a block: the array kernels every
eviction and lookup runs (`cache.KVCache`, `victims.VictimQueue`)."""

from __future__ import annotations

import numpy as np


def lowest(keys: np.ndarray, ids: np.ndarray, depth: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k entries ranked lowest by (key ascending, depth descending, id ascending: the same choice
    whatever order `ids` come in); `keys` are those of `ids`, `depth` is per id (read only for the ties at the
    k-th key: a scan of tier 0 need not gather every depth)."""
    n = len(keys)
    if k >= n:
        return np.arange(n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    kth = np.partition(keys, k - 1)[k - 1]
    below = np.flatnonzero(keys < kth)
    ties = np.flatnonzero(keys == kth)
    deepest = ties[np.lexsort((ids[ties], -depth[ids[ties]]))[: k - len(below)]]  # then lowest id: any order in
    return np.concatenate([below, deepest])


def held_run(held: np.ndarray) -> int:
    """Length of the leading run of nonzero `held` (tier bits): the first zero is the minimum's first index (one
    reduction, where finding every zero is two passes and a Python wrapper: this is asked at every admission)."""
    if not len(held):
        return 0
    first = int(held.argmin())
    return first if held[first] == 0 else len(held)


def found(held: np.ndarray, n_tiers: int) -> tuple[int, np.ndarray, np.ndarray | None]:
    """(the leading run of nonzero `held`, the best tier of each block in it, which of those sit below tier 0).
    The last is None where none does (one tier, or the run all in tier 0: the usual admission, which then reads no
    per-block tier)."""
    n = held_run(held)
    if n_tiers == 1 or (held[:n] & 1).all():
        return n, np.zeros(n, dtype=np.int64), None
    tier = lowest_bit(held[:n])
    return n, tier, tier > 0


def lowest_bit(w: np.ndarray) -> np.ndarray:
    """Index of the lowest set bit of each (nonzero) uint8: the best tier holding a block."""
    return LOWEST_BIT[w]


LOWEST_BIT = np.array([(x & -x).bit_length() - 1 if x else -1 for x in range(256)], dtype=np.int64)
