"""The levers on every family beyond the dense Llama ones: fp8/int8/int4 pages with prefix hits and a
preemption give what a cache-off run of the same codec gives, and pages demoted to a DRAM tier come back
correct. (Greedy parity with transformers for each family runs in test_model_vs_hf.py and test_llm.py, where
the family is one of the `checkpoint` fixture's parameters.)"""

from __future__ import annotations

import pytest

from agentkv.engine.llm import LLM
from agentkv.engine.sliding import SlidingPages
from agentkv.kvcache.sizing import codec, kv_bytes_per_block
from tests.codecs.test_engine_codecs import GREEDY, engine, outputs
from tests.engine.conftest import prompts, write_checkpoint

FAMILIES = ["qwen3_moe", "gemma3", "gpt_oss", "llama4"]


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp(f"levers-{request.param}"), request.param, seed=7)


@pytest.fixture(scope="module")
def ps():
    return prompts(6, seed=9, lo=20, hi=70)


@pytest.mark.parametrize("name", ["fp8", "int8", "int4"])
def test_quantized_pages_hit_preempt_and_reload_from_dram(family_dir, ps, name):
    expected = outputs(engine(family_dir, name, enable_prefix_caching=False), ps)
    llm = engine(family_dir, name)
    assert llm.layout.page_bytes == kv_bytes_per_block(llm.config.spec(str(family_dir)), codec(name), 8)
    assert outputs(llm, ps) == expected
    again = [llm.generate([p], GREEDY)[0] for p in ps]
    assert [o.outputs[0].token_ids for o in again] == expected and all(o.num_cached_tokens > 0 for o in again)
    page, window = llm.layout.page_bytes, 0
    if llm.sliding is not None:  # the sliding group's least (the engine's defaults: 64 sequences, 2048 tokens)
        window = SlidingPages.floor(64, 2048, llm.sliding.window, 8) * llm.sliding.layout.page_bytes
    tight = engine(family_dir, name, kv_cache_bytes=page * 12 + window)
    assert outputs(tight, ps) == expected and tight.scheduler.preemptions > 0
    tiered = engine(family_dir, name, kv_cache_bytes=page * 16 + window, host_kv_bytes=page * 200)
    outputs(tiered, ps)
    back = [tiered.generate([p], GREEDY)[0] for p in ps]
    assert [o.outputs[0].token_ids for o in back] == expected
    assert sum(o.cached_tokens_per_tier["dram"] for o in back) > 0


def test_the_start_up_line_names_the_layer_groups(family_dir):
    from agentkv.server.startup import summary

    llm = LLM(str(family_dir), dtype="float32", block_size=8, kv_cache_bytes=2**26)
    line = summary(llm, "m", 4096, None, 0)
    cfg = llm.config
    want = {"qwen3_moe": "3 layers, MoE 8 experts top-2 on 2 layers",
            "gemma3": f"6 layers: 1 full + 5 sliding (window 8, {llm.sliding.slab.shape[0] if llm.sliding else 0:,} "
                      "pages of their own)",
            "gpt_oss": "4 layers: 2 full + 2 sliding (window 8, ",
            "llama4": "4 layers: 1 full + 3 chunked (chunk 8, "}[cfg.family]
    assert f"model m ({want}" in line


def test_kv_eval_scores_what_transformers_scores(family_dir):
    """kv-eval's reference (bf16 pages, chunks of 20 over windows of 8) scores the perplexity transformers does
    on the same text, windows, sinks and experts included; a codec's error is measured beside it."""
    from tests.engine.conftest import kv_eval_and_transformers_ppl

    (ref, fp8), ppl = kv_eval_and_transformers_ppl(family_dir)
    assert ref.ppl == pytest.approx(ppl, rel=2e-3)
    assert fp8.kl > 0 and all(e > 0 for e in fp8.attn_rel_err)
