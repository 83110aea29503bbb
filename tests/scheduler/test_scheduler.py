"""The torch-free scheduler the engine and the simulator share."""

from __future__ import annotations

import numpy as np

from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.policies import LRU
from agentkv.kvcache.tiers import TierSpec
from agentkv.scheduler import Scheduler, SchedulerConfig, Sequence, Status


def sched(blocks: int, budget: int = 64, bs: int = 4, max_seqs: int = 8) -> Scheduler:
    cache = KVCache([TierSpec("gpu", blocks, 1)], LRU())
    return Scheduler(SchedulerConfig(bs, budget, max_seqs), cache)


def seq(i: int, prompt: int, out: int, bs: int = 4, base: int = 0) -> Sequence:
    return Sequence(i, prompt, np.arange(base, base + prompt // bs), out)


def run_all(s: Scheduler, limit: int = 10_000) -> list[Sequence]:
    done, t = [], 0.0
    while s.has_work() and t < limit:
        b = s.schedule(t)
        assert b.num_tokens <= s.cfg.max_batched_tokens
        done += s.postprocess(b, t + 1)
        t += 1
    return done


def test_chunked_prefill_under_the_token_budget():
    s = sched(100, budget=10)
    a = seq(0, 25, 3)
    s.add(a)
    chunks = []
    while a.in_prefill or a.status is Status.WAITING:
        b = s.schedule(0)
        chunks.append([c.n for c in b.prefills])
        s.postprocess(b, 0)
    assert chunks == [[10], [10], [5]]
    assert a.generated == 1  # the last prefill chunk samples the first token


def test_decodes_go_first_and_prefill_fills_the_rest():
    s = sched(100, budget=8)
    a, b = seq(0, 8, 5), seq(1, 40, 2, base=100)
    s.add(a)
    s.postprocess(s.schedule(0), 0)  # a prefilled
    s.add(b)
    batch = s.schedule(1)
    assert batch.decodes == [a] and [c.n for c in batch.prefills] == [7]


def test_prefix_hits_skip_prefill():
    s = sched(100)
    first = seq(0, 16, 2)
    s.add(first)
    run_all(s)
    again = seq(1, 24, 2)  # the same first 16 tokens, then 8 more
    s.add(again)
    b = s.schedule(0)
    assert again.cached == 16 and b.prefills[0].start == 16 and b.prefills[0].n == 8


def test_full_hit_still_computes_the_last_token():
    s = sched(100)
    s.add(seq(0, 16, 1))
    run_all(s)
    again = seq(1, 16, 1)
    s.add(again)
    b = s.schedule(0)
    assert again.cached == 15 and b.prefills[0].n == 1


def test_preemption_under_block_pressure_completes_everyone():
    s = sched(blocks=12, budget=64)
    seqs = [seq(i, 12, 20, base=100 * i) for i in range(4)]  # each needs 8 blocks by the end
    for q in seqs:
        s.add(q)
    done = run_all(s)
    assert sorted(q.seq_id for q in done) == [0, 1, 2, 3]
    assert all(q.generated == 20 for q in seqs)
    assert s.preemptions > 0
    assert s.cache.reserved == 0 and s.cache.evictable_blocks() == s.cache.used[0]


def test_abort_releases_everything():
    s = sched(100)
    a, b = seq(0, 16, 50), seq(1, 16, 50, base=50)
    s.add(a)
    s.add(b)
    s.postprocess(s.schedule(0), 0)
    assert s.abort(0) and s.abort(1) and not s.abort(7)
    assert not s.has_work()
    assert s.cache.reserved == 0 and np.all(s.cache.pins == 0)


def test_first_come_first_served_when_full():
    s = sched(blocks=10, max_seqs=8)
    big, small = seq(0, 36, 2), seq(1, 4, 2, base=200)
    s.add(seq(9, 8, 30, base=300))  # holds blocks for a while
    s.schedule(0)
    s.add(big)
    s.add(small)
    b = s.schedule(1)
    assert big.status is Status.WAITING and small.status is Status.WAITING  # small does not jump the queue
    assert not any(c.seq is small for c in b.prefills)
