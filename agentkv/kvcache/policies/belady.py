"""Belady's rule, the offline reference: evict the block whose next use is farthest (ties: deepest first).

A parent's next use is never later than its child's, so the kept set stays prefix-closed and block hits equal
prefix hits: on one tier nothing online can beat it on the same request sequence. It needs the future, so it
is built from the replay's reference stream (`next_use[r]`: for each block of request r, the position of
the next request that uses it, +inf if none).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from agentkv.kvcache.policy import AccessContext, Policy


class Belady(Policy):
    name = "belady"
    keys_only_rise = False  # the next use moves later after every use

    def __init__(self, next_use: Sequence[np.ndarray]) -> None:
        self.next_use = next_use

    def on_release(self, slots: np.ndarray, depth: np.ndarray, ctx: AccessContext) -> np.ndarray:
        nxt = self.next_use[ctx.request]
        if len(nxt) != len(slots):
            raise ValueError(f"Belady: request {ctx.request} released {len(slots)} blocks, oracle has {len(nxt)}")
        return -nxt


def next_uses(stream: Sequence[np.ndarray]) -> list[np.ndarray]:
    """For a reference stream (block ids per request, in order), each reference's next use (+inf: none)."""
    n_ids = 1 + max((int(r.max()) for r in stream if len(r)), default=-1)
    seen = np.full(n_ids, np.inf)
    out: list[np.ndarray] = [np.zeros(0)] * len(stream)
    for r in range(len(stream) - 1, -1, -1):
        ids = stream[r]
        out[r] = seen[ids].copy()
        seen[ids] = r
    return out
