"""The engine core's contracts: one plan per step checked against the policy core after every step, bounded
memory over thousands of prompts, a thread-safe engine loop, and the engine's hit rate equal to the offline
replay's for the same requests, capacity and policy."""

from __future__ import annotations

import random
import threading
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentkv import LLM, SamplingParams
from agentkv.engine.async_llm import AsyncLLM
from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.policies import make_policy
from agentkv.kvcache.replay import replay
from agentkv.kvcache.tiers import TierSpec
from agentkv.workload.blocklog import from_lists
from tests.engine.conftest import prompts

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
BS = 8


@pytest.fixture(scope="module")
def family(llama_dir):
    """Prompts sharing prefixes (so hits, shared pages and copies on write all happen), and each one's greedy
    output from an engine with room for everything."""
    base = prompts(4, seed=21, lo=20, hi=40)
    ps = [*base, *(b[: len(b) // 2] + p[:9] for b, p in zip(base, prompts(4, seed=22, lo=10, hi=12), strict=True))]
    ps += [base[0] + base[1][:5]]
    free = LLM(str(llama_dir), dtype="float32", block_size=BS)
    return ps, [o.outputs[0].token_ids for o in free.generate(ps, GREEDY)]


ops = st.lists(st.tuples(st.sampled_from(["add", "add", "step", "step", "step", "abort"]), st.integers(0, 99)),
               min_size=5, max_size=40)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(script=ops, pages=st.integers(9, 24), host=st.sampled_from([0, 40]))
def test_random_interleavings_keep_the_accounts_and_the_outputs(llama_dir, family, script, pages, host):
    ps, expected = family
    probe = LLM(str(llama_dir), dtype="float32", block_size=BS, kv_cache_bytes=2**20)
    page = probe.layout.page_bytes
    llm = LLM(str(llama_dir), dtype="float32", block_size=BS, kv_cache_bytes=page * pages, host_kv_bytes=page * host,
              max_num_batched_tokens=32, max_num_seqs=4, check_invariants=True)
    which: dict[str, int] = {}
    aborted: set[str] = set()
    done: dict[str, list[int]] = {}
    for op, k in script:
        if op == "add":
            i = k % len(ps)
            which[llm.add_request(ps[i], GREEDY)] = i
        elif op == "abort" and which:
            rid = sorted(which)[k % len(which)]
            if rid not in done and llm.abort(rid):
                aborted.add(rid)
        else:
            done.update({o.request_id: o.outputs[0].token_ids for o in llm.step() if o.finished})
    for _ in range(500):
        if not llm.has_unfinished_requests():
            break
        done.update({o.request_id: o.outputs[0].token_ids for o in llm.step() if o.finished})
    assert set(done) | aborted == set(which) and not set(done) & aborted  # every request ends, exactly once
    for rid, toks in done.items():
        assert toks == expected[which[rid]], rid
    llm.step()  # the last releases are carried out by the next plan
    assert llm.cache.reserved == 0 and len(llm.pool.rows) == 4


def test_memory_stays_bounded_over_5000_distinct_prompts(llama_dir):
    """Ids are recycled: after 5,000 distinct 3-block prompts (15,000 distinct blocks), the id map and the
    core's per-id arrays hold at most the tiers' blocks plus those named by requests alive at once."""
    pages, wave = 48, 50
    llm = LLM(str(llama_dir), dtype="float32", block_size=BS, max_num_seqs=wave, max_num_batched_tokens=2048)
    llm = LLM(str(llama_dir), dtype="float32", block_size=BS, kv_cache_bytes=llm.layout.page_bytes * pages,
              max_num_seqs=wave, max_num_batched_tokens=2048)
    rng = np.random.default_rng(0)
    one = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    for _ in range(5000 // wave):
        llm.generate([rng.integers(5, 128, 3 * BS + 1).tolist() for _ in range(wave)], one)
    bound = pages + 3 * wave  # cached blocks + blocks named by one wave of live requests
    assert llm.ids.capacity <= bound and len(llm.ids) <= pages
    assert llm.cache.n_slots <= max(1024, 2 * bound)
    assert llm.cache.stats.lookups == 5000


def test_threads_adding_and_aborting_against_the_loop(llama_dir):
    llm = LLM(str(llama_dir), dtype="float32", block_size=BS, max_num_seqs=8, check_invariants=True)
    engine = AsyncLLM(llm)
    ps = prompts(6, seed=30, lo=10, hi=30)
    results: list[tuple[str, str | None]] = []
    errors: list[BaseException] = []

    def client(seed: int) -> None:
        r = random.Random(seed)
        try:
            streams = [engine.add_request(r.choice(ps), SamplingParams(max_tokens=r.randint(1, 12), temperature=0,
                                                                        ignore_eos=True)) for _ in range(6)]
            for s in streams[::2]:
                if r.random() < 0.7:
                    engine.abort(s.request_id)
            for s in streams:
                last = list(s)[-1]
                results.append((s.request_id, last.finish_reason))
        except BaseException as e:  # surfaced below with the thread's failure
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    engine.shutdown()
    assert not errors and not any(t.is_alive() for t in threads)
    assert len(results) == 30 and len({r for r, _ in results}) == 30
    assert {f for _, f in results} <= {"length", "abort"} and engine.error is None
    assert not llm.has_unfinished_requests() and llm.cache.reserved == 0


def _token_scaled(trace, sessions: int, turns: int, max_blocks: int):
    """The first `turns` requests of the first `sessions` sessions, each cut to its first `max_blocks` blocks
    (prefix structure kept: equal ids stay equal), as a trace whose requests are exactly their blocks."""
    first = trace.session_bounds()[:sessions]
    keep = np.concatenate([np.arange(f, min(f + turns, trace.session_bounds()[s + 1])) for s, f in enumerate(first)])
    blocks = [trace.blocks(int(i))[:max_blocks] for i in keep]
    lengths = np.array([len(b) for b in blocks], dtype=np.int64)
    return replace(trace, session=trace.session[keep], time=trace.time[keep],
                   input_tokens=lengths * trace.block_size, output_tokens=np.ones(len(keep), dtype=np.int64),
                   think_time=trace.think_time[keep], api_time=trace.api_time[keep], finish=trace.finish[keep],
                   block_log=from_lists(trace.session[keep], blocks))


def test_engine_hit_rate_equals_the_offline_replay(llama_dir, claude_code):
    """A slice of real Claude Code sessions becomes token sequences (each trace block id → the same 8 tokens
    everywhere), served one request at a time; the engine's hits are the offline replay's, block for block."""
    sub = _token_scaled(claude_code, sessions=6, turns=10, max_blocks=30)
    pages = 140  # the six sessions' working set is 180 blocks: LRU evicts, and hits a third
    order = np.argsort(np.arange(sub.n_requests) % 10, kind="stable")  # the sessions' turns interleaved
    rng = np.random.default_rng(1)
    tokens = {int(b): rng.integers(32, 128, BS).tolist() for b in np.unique(sub.block_log.ids)}
    probe = LLM(str(llama_dir), dtype="float32", block_size=BS, kv_cache_bytes=2**20)
    llm = LLM(str(llama_dir), dtype="float32", block_size=BS, kv_cache_bytes=probe.layout.page_bytes * pages,
              max_num_batched_tokens=4096)
    engine_hits = 0
    for i in order.tolist():
        prompt = [t for b in sub.blocks(i) for t in tokens[int(b)]]
        engine_hits += llm.generate([prompt], SamplingParams(max_tokens=1, temperature=0))[0].num_cached_tokens
    cache = KVCache([TierSpec("gpu", pages, 1)], make_policy("lru"))
    ref = replay(sub, order, np.zeros(sub.n_requests), cache)
    scaled = sub.block_size / BS
    assert llm.cache.stats.hit_blocks[0] == cache.stats.hit_blocks[0]  # the same blocks hit, exactly
    assert cache.stats.dropped[0] > 0 and 0.2 < ref.hit_rate < 0.6  # eviction mattered, and hits did too
    # in tokens, the engine recomputes a fully cached prompt's last token (it yields the logits): at most one
    # token per request apart
    total = int(sub.input_tokens.sum() / scaled)
    assert 0 <= ref.hit_tokens.sum() / scaled - engine_hits <= sub.n_requests
    assert abs(ref.hit_rate - engine_hits / total) <= sub.n_requests / total


@pytest.mark.parametrize("policy", ["cost", "agent", "lfu"])
def test_every_online_policy_runs_in_the_engine(llama_dir, family, policy):
    """Requests carry a session and how the previous reply ended, so the agent-aware policy ranks the engine's
    blocks by their session as it does in the simulator; cost-aware gets the model's shape."""
    ps, expected = family
    probe = LLM(str(llama_dir), dtype="float32", block_size=BS, kv_cache_bytes=2**20)
    llm = LLM(str(llama_dir), dtype="float32", block_size=BS, kv_cache_bytes=probe.layout.page_bytes * 12,
              policy=policy, check_invariants=True)
    for turn in range(2):
        for s, i in enumerate([0, 4, 1]):
            rid = llm.add_request(ps[i], GREEDY, session=f"agent-{s}")
            while llm.has_unfinished_requests():
                for o in llm.step():
                    if o.finished:
                        assert o.request_id == rid and o.outputs[0].token_ids == expected[i]
            llm.classify(f"agent-{s}", "tool_calls" if turn == 0 else "stop")  # as a server does, having parsed it
    assert llm.cache.stats.hit_blocks.sum() > 0
    if policy == "agent":
        assert set(llm.cache.policy.owner[llm.cache.policy.owner >= 0].tolist()) <= {0, 1, 2}
        assert llm.cache.policy.last_kind[:3].tolist() == [2, 2, 2]  # the last turns ended the conversation


def test_profiling_forward_leaves_the_engine_intact(llama_dir, family):
    """The pass that sizes KV on CUDA (peak activations of a full step) runs on any device over a scratch slab;
    afterwards the engine's own block tables and outputs are untouched."""
    ps, expected = family
    llm = LLM(str(llama_dir), dtype="float32", block_size=BS, check_invariants=True)
    first = llm.generate(ps[:2], GREEDY)
    assert llm.runner.profile_activations(100) == 0  # no allocator statistics on CPU: the pass itself is what runs here
    assert [o.outputs[0].token_ids for o in first + llm.generate(ps[2:4], GREEDY)] == expected[:4]
