"""The victim queue (kvcache/victims.py) evicts exactly what a scan of the whole tier would."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agentkv.catalog import model
from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.policies import LFU, LRU, AgentAware, Belady, CostAware
from agentkv.kvcache.policy import AccessContext
from agentkv.kvcache.tiers import TierSpec
from agentkv.kvcache.victims import exact_for
from tests.kvcache.synthetic import random_stream


class ScannedLRU(LRU):
    def keys(self, slots: np.ndarray, now: float) -> np.ndarray:  # the same keys, but not the default method
        return super().keys(slots, now)


class ScannedLFU(LFU):
    def keys(self, slots: np.ndarray, now: float) -> np.ndarray:
        return super().keys(slots, now)


class ScannedCost(CostAware):
    def keys(self, slots: np.ndarray, now: float) -> np.ndarray:
        return super().keys(slots, now)


PAIRS = {
    "lru": (LRU, ScannedLRU),
    "lfu": (LFU, ScannedLFU),
    "cost": (lambda: CostAware(model("llama-3.1-8b"), 4), lambda: ScannedCost(model("llama-3.1-8b"), 4)),
}


def test_only_stored_keys_that_only_rise_get_a_queue():
    assert exact_for(LRU()) and exact_for(LFU()) and exact_for(CostAware(model("llama-3.1-8b"), 4))
    assert not exact_for(AgentAware())  # keys depend on the time: every eviction scans
    assert not exact_for(Belady([]))  # stored keys fall
    assert not exact_for(ScannedLRU())


def moves_of(moves) -> list[tuple]:
    return [(m.kind, m.src, m.dst, sorted(m.blocks.tolist())) for m in moves]


@settings(deadline=None, max_examples=12)
@given(seed=st.integers(0, 10**6), policy=st.sampled_from(sorted(PAIRS)), write_through=st.booleans(),
       caps=st.tuples(st.integers(60, 200), st.integers(100, 400), st.integers(0, 600)))
def test_queue_evicts_what_a_full_scan_evicts(seed, policy, write_through, caps):
    """Two caches in lockstep over a long run of overlapping requests: one with victim queues, one scanning
    every tier on every eviction (same keys). Every grant, move and residency must agree."""
    rng = np.random.default_rng(seed)
    stream, owner = random_stream(seed, 12, 1500)
    specs = [TierSpec(name, float(b), 1) for name, b in zip(["gpu", "dram", "disk"], caps, strict=True)]
    fast, scan = (KVCache(specs, make(), write_through=write_through) for make in PAIRS[policy])
    assert fast._victims is not None and scan._victims is None
    running: list[int] = []
    for r, ids in enumerate(stream):
        ids = ids[: caps[0] // 4]
        ctx = AccessContext(float(r), session=owner[r], request=r, finish=1)
        grants = [c.acquire(r, ids, len(ids) + 1, ctx) for c in (fast, scan)]
        assert (grants[0] is None) == (grants[1] is None)
        if grants[0] is not None:
            assert grants[0].hit_blocks == grants[1].hit_blocks
            assert moves_of(grants[0].moves) == moves_of(grants[1].moves)
            n = grants[0].hit_blocks
            assert moves_of(fast.commit(r, ids[n:], ctx.now)) == moves_of(scan.commit(r, ids[n:], ctx.now))
            running.append(r)
        while running and (len(running) > 4 or rng.random() < 0.4):  # requests overlap, finish out of order
            k = running.pop(int(rng.integers(len(running))))
            for c in (fast, scan):
                c.release(k, AccessContext(float(r), session=owner[k], request=k, finish=1))
        assert np.array_equal(fast.where, scan.where)
        assert np.array_equal(fast.used, scan.used)
    assert fast.stats.demoted[0] > 0  # the run exercised eviction
