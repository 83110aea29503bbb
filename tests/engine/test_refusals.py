"""What the engine refuses leaves nothing behind, and what it keeps per client is bounded: an out-of-range seed
or top_k is a ValueError before anything is queued (the next request runs), usage stays within the prompt
after preemption and recompute, and the per-session map holds at most `max_sessions` sessions."""

from __future__ import annotations

import pytest

from agentkv.engine.llm import LLM
from agentkv.engine.sequence import SamplingParams
from tests.engine.conftest import prompts

GREEDY = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(llama_dir) -> LLM:
    return LLM(str(llama_dir), dtype="float32", block_size=8, kv_cache_bytes=2**20, check_invariants=True)


@pytest.mark.parametrize("bad", [dict(seed=2**64), dict(seed=-(2**63) - 1), dict(top_k=2**63), dict(top_k=-1),
                                 dict(temperature=float("nan")), dict(max_tokens=2**40)])
def test_out_of_range_numbers_are_refused_and_the_engine_goes_on(llm, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SamplingParams(**{"temperature": 1.0, **bad})
    forced = SamplingParams(temperature=1.0)  # past the check (the reproduction): add_request still
    object.__setattr__(forced, next(iter(bad)), next(iter(bad.values())))  # refuses it before queuing anything
    with pytest.raises((ValueError, RuntimeError, OverflowError)):
        llm.add_request([5, 6, 7], forced)
        llm.step()
    assert not llm.has_unfinished_requests() and not llm._seqs
    out = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=3, temperature=1.0, seed=2**64 - 1, top_k=2**31 - 1))
    assert len(out[0].outputs[0].token_ids) == 3


def test_usage_stays_within_the_prompt_after_preemption(llama_dir):
    """Under KV pressure with a host tier, a preempted request comes back to find its own generated blocks
    cached: they are not prompt tokens, so they are not reported as cached ones."""
    probe = LLM(str(llama_dir), dtype="float32", block_size=8, kv_cache_bytes=2**20)
    page = probe.layout.page_bytes
    llm = LLM(str(llama_dir), dtype="float32", block_size=8, kv_cache_bytes=page * 20, host_kv_bytes=page * 400,
              max_num_batched_tokens=64, check_invariants=True)
    head = prompts(1, seed=3, lo=30, hi=31)[0]
    ps = [head + p for p in prompts(8, seed=4, lo=3, hi=20)]
    outs = llm.generate(ps, SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    assert llm.scheduler.preemptions > 0 and any(o.preemptions for o in outs)
    for o in outs:
        assert 0 <= o.num_cached_tokens < len(o.prompt_token_ids), (o.num_cached_tokens, len(o.prompt_token_ids))
        assert sum(o.cached_tokens_per_tier.values()) == o.num_cached_tokens


def test_sessions_are_bounded_and_their_numbers_reused(llama_dir):
    llm = LLM(str(llama_dir), dtype="float32", block_size=8, kv_cache_bytes=2**20, policy="agent", max_sessions=64)
    for i in range(20_000):  # queued and cancelled: the map sees every id
        llm.abort(llm.add_request([5, 6, 7], SamplingParams(max_tokens=1), session=f"client-{i}-" + "x" * 200))
    assert len(llm._sessions) == 64
    policy = llm.cache.policy
    for j in range(300):  # served: the agent policy's per-session state stays within the bound too
        rid = llm.add_request([9, 10, j % 50, 11], SamplingParams(max_tokens=1), session=f"s{j}")
        while llm.has_unfinished_requests():
            llm.step()
        assert rid not in llm._seqs
    assert len(llm._sessions) == 64 and len(policy.last_release) <= 64 and len(policy.chains) <= 64
