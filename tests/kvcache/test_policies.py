"""What each policy is for, shown on small hand-built cases, and the replay on the real traces."""

from __future__ import annotations

import numpy as np
import pytest

from agentkv.catalog import model
from agentkv.evaluate.sweep import tier_specs
from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.policies import LFU, LRU, AgentAware, CostAware, make_policy
from agentkv.kvcache.policy import AccessContext
from agentkv.kvcache.replay import reference_stream, replay
from agentkv.kvcache.sizing import codec
from agentkv.kvcache.tiers import Size, TierEntry, TierSpec
from agentkv.workload.arrivals import ArrivalModel, place, replay_order
from agentkv.workload.stats import infinite_cache_hits
from agentkv.workload.trace import FINISH_END, FINISH_TOOL, FINISH_UNKNOWN


def run(cache: KVCache, key, ids, now: float, session: int = -1, finish: int = FINISH_TOOL, tick: bool = True):
    if tick:
        cache.tick(now)
    ctx = AccessContext(now, session=session, finish=finish)
    g = cache.acquire(key, np.asarray(ids), len(ids), ctx)
    cache.commit(key, np.asarray(ids)[g.hit_blocks :], now)
    cache.release(key, ctx)
    return g


def test_agent_protects_the_shared_system_prompt():
    """Two sessions of one agent share blocks 0-3; a burst of one-off sessions must not push them out."""
    shared = list(range(4))
    results = {}
    for name, policy in (("lru", LRU()), ("agent", AgentAware())):
        c = KVCache([TierSpec("gpu", 12, 1)], policy)
        run(c, "a", [*shared, 10, 11], 0.0, session=0)
        run(c, "b", [*shared, 20, 21], 1.0, session=1)
        for k in range(4):  # one-off sessions, 8 fresh blocks each
            run(c, f"x{k}", list(range(100 + 10 * k, 108 + 10 * k)), 2.0 + k, session=2 + k)
        results[name] = run(c, "c", [*shared, 30], 9.0, session=9).hit_blocks
    assert results["agent"] == 4
    assert results["lru"] == 0


def test_agent_keeps_the_session_that_comes_back_first():
    """Session 0 just called a tool (back in seconds); session 1 then ended its turn (a person reads). When a
    newcomer needs room, agent-aware evicts session 1 though it was used later; LRU evicts session 0."""
    kept = {}
    for name, policy in (("lru", LRU()), ("agent", AgentAware())):
        c = KVCache([TierSpec("gpu", 12, 1)], policy)
        t = 0.0
        for i in range(40):  # what pauses look like: ~5 s after a tool call, ~600 s after the end of a turn
            run(c, f"w{i}", [], t, session=100 + i % 4, finish=FINISH_TOOL if i % 4 else FINISH_END)
            t += 5.0 if i % 4 else 600.0
        run(c, "a", list(range(6)), t, session=0, finish=FINISH_TOOL)
        run(c, "b", list(range(50, 56)), t + 1, session=1, finish=FINISH_END)
        run(c, "z", list(range(200, 204)), t + 2, session=2, finish=FINISH_END)  # needs 4 of the 12
        kept[name] = (int(np.sum(c.tier_of(np.arange(6)) == 0)), int(np.sum(c.tier_of(np.arange(50, 56)) == 0)))
    assert kept["agent"] == (6, 2)
    assert kept["lru"] == (2, 6)


def test_agent_ranks_by_a_kind_told_after_the_release():
    """A server knows how a reply ended only once it has parsed the reply's tool calls, after the engine released
    its blocks with the kind unknown: told then (`classify`), the policy ranks as if told at the release (session
    1 called a tool and is kept, session 0 ended its turn and makes room); never told, it cannot tell them apart."""
    kept = {}
    for told in ("at release", "after", "never"):
        policy = AgentAware()
        c = KVCache([TierSpec("gpu", 12, 1)], policy)
        t = 0.0
        for i in range(40):  # one session's rhythm: back 5 s after a tool call, 600 s after the end of a turn
            finish = FINISH_TOOL if i % 2 else FINISH_END
            run(c, f"w{i}", [], t, session=100, finish=finish)
            t += 5.0 if finish == FINISH_TOOL else 600.0
        at_release = told == "at release"
        run(c, "a", list(range(6)), t, session=0, finish=FINISH_END if at_release else FINISH_UNKNOWN)
        run(c, "b", list(range(50, 56)), t + 1, session=1, finish=FINISH_TOOL if at_release else FINISH_UNKNOWN)
        if told == "after":
            policy.classify(0, FINISH_END)
            policy.classify(1, FINISH_TOOL)
        run(c, "z", list(range(200, 204)), t + 2, session=2, finish=FINISH_END)  # needs 4 of the 12
        kept[told] = (int(np.sum(c.tier_of(np.arange(6)) == 0)), int(np.sum(c.tier_of(np.arange(50, 56)) == 0)))
    assert kept["at release"] == kept["after"] == (2, 6)
    assert kept["never"] == (6, 2)


def test_agent_files_a_late_kind_only_while_the_session_is_away():
    """A kind told after the session's next request began is stale: that request filed its pause already."""
    policy = AgentAware()
    c = KVCache([TierSpec("gpu", 8, 1)], policy)
    run(c, "a", [1], 0.0, session=0, finish=FINISH_UNKNOWN)
    c.acquire("b", np.array([1, 2]), 2, AccessContext(5.0, session=0))
    policy.classify(0, FINISH_TOOL)
    assert policy.last_kind[0] == FINISH_UNKNOWN
    c.release("b", AccessContext(6.0, session=0))
    policy.classify(0, FINISH_TOOL)
    assert policy.last_kind[0] == FINISH_TOOL
    policy.classify(7, FINISH_TOOL)  # a session never seen: nothing to file
    assert len(policy.last_kind) == 1


def test_agent_measures_pauses_from_the_end_of_the_reply():
    """Tool pauses of 5 s after replies of 1 s: a session whose reply took 40 s is forecast back 5 s after the
    reply ended, not 6 s after its request arrived."""
    policy = AgentAware()
    c = KVCache([TierSpec("gpu", 64, 1)], policy)
    t = 0.0
    for i in range(40):
        ctx = AccessContext(t, session=1, finish=FINISH_TOOL)
        c.acquire(f"w{i}", np.array([i]), 1, ctx)
        ctx.now = t + 1.0  # the reply ends a second later
        c.release(f"w{i}", ctx)
        t += 6.0
    ctx = AccessContext(t, session=0, finish=FINISH_TOOL)
    c.acquire("slow", np.array([100]), 1, ctx)
    ctx.now = t + 40.0
    c.release("slow", ctx)
    assert policy.predicted_return(t + 41.0)[0] == pytest.approx(t + 45.0, abs=0.5)
    assert policy.predicted_return(t + 10.0)[0] == pytest.approx(t + 45.0, abs=0.5)  # reply still running


def test_agent_demotes_then_prefetches_before_return():
    """With a DRAM tier, KV of a session that went to a tool is demoted under pressure and fetched back to
    the GPU before the session's forecast return, so its next request hits in the GPU tier."""
    c = KVCache([TierSpec("gpu", 8, 1), TierSpec("dram", 64, 1)], AgentAware(prefetch_lead_s=10.0))
    t = 0.0
    for i in range(40):  # this session's rhythm: back 30 s after each tool call
        run(c, f"w{i}", [500 + i], t, session=1, finish=FINISH_TOOL)
        t += 30.0
    run(c, "a", list(range(6)), t, session=0, finish=FINISH_TOOL)
    run(c, "p", list(range(300, 308)), t + 1, session=2, finish=FINISH_END)  # pressure: session 0 demoted
    assert np.all(c.tier_of(np.arange(6)) == 1)
    c.tick(t + 25.0)  # within the lead of the forecast return (~30 s)
    assert np.all(c.tier_of(np.arange(6)) == 0)
    g = run(c, "a2", list(range(7)), t + 30.0, session=0, tick=False)
    assert g.hit_blocks == 6 and g.hits_per_tier[0] == 6


def test_cost_aware_keeps_the_dearer_long_context():
    """Equal use, room for one: recomputing 20 blocks deep in a context costs more than 20 shallow ones."""
    c = KVCache([TierSpec("gpu", 30, 1)], CostAware(model("llama-3.1-8b"), block_size=4096))
    long_ctx, short_ctx = list(range(20)), list(range(100, 110))
    run(c, "l", long_ctx, 0.0)
    run(c, "s", short_ctx, 1.0)
    run(c, "n", list(range(200, 210)), 2.0)  # needs 10: one of them goes
    assert c.tier_of(np.array(long_ctx)).min() == 0
    assert np.all(c.tier_of(np.array(short_ctx)) < 0)


def test_lfu_keeps_the_frequent_over_the_recent():
    c = KVCache([TierSpec("gpu", 10, 1)], LFU())
    for k in range(3):
        run(c, f"h{k}", [1, 2, 3, 4], float(k))
    run(c, "once", [10, 11, 12, 13], 5.0)
    run(c, "new", [20, 21, 22, 23], 6.0)
    assert c.tier_of(np.array([1, 2, 3, 4])).min() == 0
    assert np.any(c.tier_of(np.array([10, 11, 12, 13])) < 0)


@pytest.fixture(scope="module")
def replayed(claude_code):
    trace, arrivals = place(claude_code, ArrivalModel("concurrency", 20))  # as served: wrapped laps are copies
    return trace, replay_order(arrivals), arrivals


def test_infinite_capacity_replay_equals_trace_stats(replayed):
    trace, order, arrivals = replayed
    res = replay(trace, order, arrivals, KVCache([TierSpec("gpu", trace.n_block_ids + 1, 1)], LRU()))
    assert res.hit_tokens.sum() == infinite_cache_hits(trace, order, per_session=False).sum()


@pytest.mark.parametrize("gpu_tokens", [256_000, 512_000])
def test_claude_code_policies_against_belady(replayed, gpu_tokens):
    trace, order, arrivals = replayed
    blocks = gpu_tokens // trace.block_size
    stream = reference_stream(trace, order, blocks)
    hit = {}
    for name in ("lru", "agent", "belady"):
        policy = make_policy(name, stream, model("llama-3.1-8b"), trace.block_size)
        hit[name] = replay(trace, order, arrivals, KVCache([TierSpec("gpu", blocks, 1)], policy), stream).hit_rate
    assert hit["belady"] >= hit["agent"] > hit["lru"]


def test_dram_tier_serves_hits_and_saves_recompute(replayed):
    trace, order, arrivals = replayed
    m, c = model("llama-3.1-8b"), codec("bf16")
    gpu_only = tier_specs(Size(256_000, False), [], m, c, trace.block_size)
    with_dram = tier_specs(Size(256_000, False), [TierEntry("dram", None, 8.0)], m, c, trace.block_size)
    assert with_dram[1].capacity_blocks == 8 * with_dram[0].capacity_blocks
    a = replay(trace, order, arrivals, KVCache(gpu_only, AgentAware()))
    b = replay(trace, order, arrivals, KVCache(with_dram, AgentAware()))
    assert b.hit_rate_per_tier[1] > 0.2  # the DRAM tier serves a large share of hits
    assert b.recomputed_tokens < 0.5 * a.recomputed_tokens
    assert b.hit_tokens.sum() == pytest.approx(b.hit_rate * b.input_tokens)
    assert b.demoted_blocks[0] > 0 and b.promoted_blocks[1] > 0
