"""The sliding (or chunked) layers' page group: its pages are what `kvcache/sizing.py` prices, a running
sequence holds only its window (or chunk) of them, and a prefix hit whose window pages were evicted recomputes from where its window is
whole, with the outputs of a cache-off run."""

from __future__ import annotations

import pytest

from agentkv.engine.llm import LLM
from agentkv.engine.sequence import SamplingParams
from agentkv.kvcache.sizing import codec, kv_bytes_per_block, raw_bytes, state_bytes
from tests.engine.conftest import prompts, write_checkpoint

BS = 8
GREEDY = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module", params=["gemma3", "gpt_oss", "llama4"])
def windowed(request, tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp(f"sliding-{request.param}"), request.param, seed=3)


@pytest.mark.parametrize("name", ["fp32", "bf16", "fp8", "int4"])
def test_both_page_groups_are_sizings_bytes(windowed, name):
    llm = LLM(str(windowed), dtype="float32", kv_codec=name, block_size=BS, kv_cache_bytes=2**26)
    spec, cs = llm.config.spec(str(windowed)), codec(name)
    kinds = {g.kind: g for g in spec.groups}
    local = kinds["chunked" if llm.config.chunked else "sliding"]
    assert set(kinds) == {"full", local.kind} and local.window == 8
    assert llm.layout.page_bytes == kv_bytes_per_block(spec, cs, BS)  # the pool: full layers only
    assert llm.sliding.layout.page_bytes == local.layers * raw_bytes(local, spec, cs, BS) * BS
    assert llm.pool.num_pages == (2**26 - llm.sliding.nbytes) // llm.layout.page_bytes  # both from one budget


def test_a_running_sequence_holds_its_window_only(windowed):
    """Decoding after a 70-token prompt, each sequence holds at most the window's pages (a partial block at
    each end): what `state_bytes` prices, within one page; its full layers' pages grow with the context."""
    llm = LLM(str(windowed), dtype="float32", block_size=BS, kv_cache_bytes=2**26, check_invariants=True,
              max_num_batched_tokens=16)
    spec, page = llm.config.spec(str(windowed)), llm.sliding.layout.page_bytes
    for p in prompts(2, seed=4, lo=70, hi=71):
        llm.add_request(p, GREEDY)
    seen = 0
    while llm.has_unfinished_requests():
        llm.step()
        for seq in llm.scheduler.running:
            if seq.generated < 2:  # its last prefill chunk's pages go at the next step
                continue
            held = sum(1 for p in seq.window_pages if p)
            assert held * page <= state_bytes(spec, codec("fp32"), BS) + page
            assert len(seq.pages) >= seq.computed // BS  # the full layers keep every block
            seen += seq.computed > 60
    assert seen


def test_a_hit_whose_window_was_evicted_recomputes_from_a_whole_window(windowed):
    """Two running sequences at most: a small sliding group, whose cached windows other prompts soon evict,
    beside a pool that keeps every full-layer page. The repeated prompt's hit rewinds and still matches (a
    chunked group's hit at a chunk boundary needs none of its pages)."""
    ps = prompts(8, seed=5, lo=40, hi=70)
    expected = [o.outputs[0].token_ids for o in
                LLM(str(windowed), dtype="float32", block_size=BS, enable_prefix_caching=False).generate(ps, GREEDY)]
    llm = LLM(str(windowed), dtype="float32", block_size=BS, kv_cache_bytes=2**26, check_invariants=True,
              max_num_seqs=2, max_num_batched_tokens=32)
    assert [o.outputs[0].token_ids for o in llm.generate(ps, GREEDY)] == expected
    again = llm.generate(ps[0], GREEDY)[0]
    assert again.outputs[0].token_ids == expected[0]
    if llm.config.chunked:  # a chunk boundary needs no page before it: at worst the last block recomputes
        assert again.num_cached_tokens >= (len(ps[0]) - 1) // BS * BS
    else:
        assert llm.sliding.rewound_tokens > 0 and again.num_cached_tokens < len(ps[0]) - BS
    last = llm.generate(ps[-1], GREEDY)[0]  # the latest prompt's window is still cached: a whole hit
    assert last.outputs[0].token_ids == expected[-1] and last.num_cached_tokens >= len(ps[-1]) // BS * BS - 1
