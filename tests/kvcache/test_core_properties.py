"""Invariants of the policy core under random agentic traffic (hypothesis)."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from agentkv.catalog import model
from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.policies import LFU, LRU, AgentAware, Belady, CostAware, next_uses
from agentkv.kvcache.policy import AccessContext
from agentkv.kvcache.tiers import TierSpec
from tests.kvcache.synthetic import random_stream

SETTINGS = settings(deadline=None)
POLICIES = {
    "lru": LRU,
    "lfu": LFU,
    "cost": lambda: CostAware(model("llama-3.1-8b"), 4),
    "agent": AgentAware,
}


def tiers(*blocks: int) -> list[TierSpec]:
    names = ["gpu", "dram", "disk"]
    return [TierSpec(names[i], float(b), 1) for i, b in enumerate(blocks)]


def check_invariants(c: KVCache) -> None:
    for t in range(len(c.tiers)):
        held = int(np.count_nonzero(c.where & (1 << t)))
        assert held == c.used[t], f"tier {t}: {held} resident, {c.used[t]} counted"
        assert c.used[t] <= c.capacity[t], f"tier {t} over capacity"
    assert c.used[0] + c.reserved <= c.capacity[0]
    assert np.all(c.pins >= 0)
    pinned = np.flatnonzero(c.pins > 0)
    assert np.all(c.where[pinned] & 1), "a pinned block left the GPU tier"


def atomic_replay(stream: list[np.ndarray], cache: KVCache, owner: list[int] | None = None) -> list[int]:
    """Per request: the leading hit run, running requests one at a time."""
    hits = []
    for r, ids in enumerate(stream):
        ctx = AccessContext(float(r), session=owner[r] if owner else -1, request=r, finish=1)
        g = cache.acquire(r, ids, len(ids), ctx)
        assert g is not None
        for b in ids[: g.hit_blocks]:  # every reported hit is resident somewhere, and now in the GPU tier
            assert cache.where[b] & 1
        cache.commit(r, ids[g.hit_blocks :], ctx.now)
        cache.release(r, ctx)
        check_invariants(cache)
        hits.append(g.hit_blocks)
    return hits


def naive_lru(stream: list[np.ndarray], capacity: int) -> list[int]:
    """LRU with tail-first eviction, the obvious way: an ordered dict, a request's tail entered first."""
    od: OrderedDict[int, None] = OrderedDict()
    hits = []
    for ids in stream:
        n = 0
        for b in ids.tolist():
            if b not in od:
                break
            n += 1
        hits.append(n)
        for b in reversed(ids.tolist()):
            od[b] = None
            od.move_to_end(b)
        while len(od) > capacity:
            od.popitem(last=False)
    return hits


@SETTINGS
@given(seed=st.integers(0, 10**6), sessions=st.integers(1, 6), cap=st.integers(4, 40))
def test_lru_equals_naive_reference(seed, sessions, cap):
    stream, _ = random_stream(seed, sessions, 60)
    stream = [s[:cap] for s in stream]
    assert atomic_replay(stream, KVCache(tiers(cap), LRU())) == naive_lru(stream, cap)


@SETTINGS
@given(seed=st.integers(0, 10**6), sessions=st.integers(1, 6), cap=st.integers(4, 40))
def test_belady_is_never_beaten_on_one_tier(seed, sessions, cap):
    stream, owner = random_stream(seed, sessions, 60)
    stream = [s[:cap] for s in stream]
    best = sum(atomic_replay(stream, KVCache(tiers(cap), Belady(next_uses(stream)))))
    for make in POLICIES.values():
        assert sum(atomic_replay(stream, KVCache(tiers(cap), make()), owner)) <= best


@SETTINGS
@given(seed=st.integers(0, 10**6), policy=st.sampled_from(sorted(POLICIES)), write_through=st.booleans(),
       caps=st.tuples(st.integers(4, 30), st.integers(0, 60), st.integers(0, 60)))
def test_tiered_replay_keeps_invariants(seed, policy, write_through, caps):
    stream, owner = random_stream(seed, 4, 50)
    stream = [s[: caps[0]] for s in stream]
    c = KVCache(tiers(*caps), POLICIES[policy](), write_through=write_through)
    for r, ids in enumerate(stream):
        c.tick(float(r))
        check_invariants(c)
        ctx = AccessContext(float(r), session=owner[r], request=r, finish=1)
        g = c.acquire(r, ids, len(ids), ctx)
        assert g.hits_per_tier.sum() == g.hit_blocks
        c.commit(r, ids[g.hit_blocks :], ctx.now)
        c.release(r, ctx)
        check_invariants(c)


@SETTINGS
@given(seed=st.integers(0, 10**6), policy=st.sampled_from(sorted(POLICIES)), cap=st.integers(6, 40),
       ops=st.lists(st.integers(0, 2), min_size=10, max_size=80))
def test_pinned_blocks_are_never_evicted_under_concurrency(seed, policy, cap, ops):
    """Requests overlap: several hold pins at once while others allocate; nothing they hold moves."""
    stream, owner = random_stream(seed, 5, len(ops) + 1)
    c = KVCache(tiers(cap, cap), POLICIES[policy]())
    running: dict[int, np.ndarray] = {}
    waiting: dict[int, tuple[np.ndarray, int]] = {}
    nxt = 0
    for op in ops:
        if op == 0 and nxt < len(stream):  # a request arrives
            ids = stream[nxt][: cap // 2]
            ctx = AccessContext(float(nxt), session=owner[nxt], request=nxt)
            n_hit, hit_tier = c.lookup(ids)
            hits = ids[:n_hit]
            need = int(np.sum(hit_tier > 0)) + len(ids) + 1 - n_hit  # +1: a partial last block
            soon_pinned = int(np.sum((hit_tier == 0) & (c.pins[hits] == 0)))
            room = c.free_blocks() + c.evictable_blocks() - soon_pinned
            g = c.acquire(nxt, ids, len(ids) + 1, ctx)
            assert (g is None) == (need > room)
            if g is not None:
                running[nxt] = ids[: g.hit_blocks]
                waiting[nxt] = (ids[g.hit_blocks :], len(ids) + 1 - g.hit_blocks)
            nxt += 1
        elif op == 1 and waiting:  # a running request writes its blocks
            k = next(iter(waiting))
            ids, _ = waiting.pop(k)
            c.commit(k, ids, 0.0)
            running[k] = np.concatenate([running[k], ids])
        elif op == 2 and running:  # one finishes
            k = next(iter(running))
            waiting.pop(k, None)
            c.release(k, AccessContext(float(nxt), session=owner[k], request=k))
            del running[k]
        check_invariants(c)
        for held in running.values():
            assert np.all(c.where[held] & 1), "a running request lost a block it holds"


def test_refused_acquire_changes_nothing():
    c = KVCache(tiers(8), LRU())
    ctx = AccessContext(0.0)
    assert c.acquire("a", np.arange(6), 6, ctx) is not None
    c.commit("a", np.arange(6), 0.0)
    before = (c.where.copy(), c.pins.copy(), c.used.copy(), c.reserved)
    assert c.acquire("b", np.arange(10, 14), 4, ctx) is None  # 6 pinned + 4 > 8
    assert np.array_equal(before[0], c.where) and np.array_equal(before[1], c.pins)
    assert np.array_equal(before[2], c.used) and before[3] == c.reserved
    assert c.stats.refused == 1


def test_partial_blocks_are_reserved_and_freed():
    c = KVCache(tiers(10), LRU())
    ctx = AccessContext(0.0)
    c.acquire("a", np.arange(3), 5, ctx)  # 3 named blocks + 2 being written (one partial)
    assert c.reserved == 5 and c.free_blocks() == 5
    c.commit("a", np.arange(3), 0.0)
    assert c.reserved == 2 and c.used[0] == 3
    c.release("a", ctx)
    assert c.reserved == 0 and c.used[0] == 3 and c.free_blocks() == 7


def test_a_hit_being_promoted_is_not_evicted_from_its_tier_to_make_room():
    """Tier 0 full, tier 1 full: admitting a request whose prefix sits only in tier 1 demotes tier-0 blocks into
    tier 1. The blocks being promoted must not be the ones tier 1 evicts for them (their copy would be gone
    before it is read)."""
    cache = KVCache([TierSpec("gpu", 4, 1), TierSpec("dram", 4, 1)], LRU())
    ctx = AccessContext(0.0)
    for key, ids in enumerate([np.arange(0, 4), np.arange(4, 8), np.arange(8, 12)]):
        assert cache.acquire(key, ids[:0], 4, ctx) is not None
        cache.commit(key, ids, 0.0)
        cache.release(key, ctx)
    grant = cache.acquire(9, np.arange(4, 8), 4, AccessContext(1.0))  # 4..7 live in tier 1 only; 0..3 went
    assert grant is not None and grant.hits_per_tier.tolist() == [0, 4]
    dropped = [b for mv in grant.moves if mv.kind == "drop" and mv.src == 1 for b in mv.blocks.tolist()]
    assert not set(dropped) & set(range(4, 8))
    assert (cache.where[4:8] & 1).all()


def test_a_block_promoted_from_disk_goes_back_to_dram_not_straight_to_disk():
    """A promotion copies a block up and the lower copy stays. When the GPU evicts it again it is offered to
    DRAM like any other block (the next tier), not dropped because disk still holds it; blocks DRAM already
    holds are dropped (freed), never copied twice."""
    cache = KVCache(tiers(4, 4, 16), LRU())
    for key in range(4):  # blocks 0..3 end on disk, 4..7 in DRAM, 12..15 on the GPU
        ids = np.arange(4 * key, 4 * key + 4)
        assert cache.acquire(key, ids[:0], 4, AccessContext(float(key))) is not None
        cache.commit(key, ids, float(key))
        cache.release(key, AccessContext(float(key)))
    assert cache.tier_of(np.arange(4)).tolist() == [2] * 4
    grant = cache.acquire(9, np.arange(4), 4, AccessContext(5.0))
    assert grant is not None and grant.hits_per_tier.tolist() == [0, 0, 4]
    cache.release(9, AccessContext(5.0))
    grant = cache.acquire(10, np.arange(20, 24)[:0], 4, AccessContext(6.0))  # evicts 0..3 from the GPU
    assert grant is not None
    moved = {(mv.kind, mv.src, mv.dst): set(mv.blocks.tolist()) for mv in grant.moves}
    assert moved[("demote", 0, 1)] == {0, 1, 2, 3}
    assert ((cache.where[:4] & 0b110) == 0b110).all()  # in DRAM again, the disk copy kept
    check_invariants(cache)
