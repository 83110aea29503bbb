"""The levers on every family beyond the dense Llama ones: fp8/int8/int4 pages with prefix hits and a
preemption give what a cache-off run of the same codec gives, and pages demoted to a DRAM tier come back
correct. (Greedy parity with transformers for each family runs in test_model_vs_hf.py and test_llm.py, where
the family is one of the `checkpoint` fixture's parameters.)"""

from __future__ import annotations

import pytest

from agentkv.engine.llm import LLM
from agentkv.engine.sequence import SamplingParams
from agentkv.kvcache.sizing import codec, kv_bytes_per_block
from tests.engine.conftest import prompts, write_checkpoint

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
FAMILIES = ["qwen3_moe", "gemma3", "gpt_oss"]


@pytest.fixture(scope="module", params=FAMILIES)
def family_dir(request, tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp(f"levers-{request.param}"), request.param, seed=7)


@pytest.fixture(scope="module")
def ps():
    p = prompts(5, seed=9, lo=20, hi=70)
    p.append([*p[0][:32], 5, 6, 7])  # shares 32 tokens (4 blocks of 8) with prompt 0
    return p


def engine(folder, name: str, **kw) -> LLM:
    return LLM(str(folder), dtype="float32", kv_codec=name, block_size=8, check_invariants=True, **kw)


def outputs(llm: LLM, ps) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in llm.generate(ps, GREEDY)]


@pytest.mark.parametrize("name", ["fp8", "int8", "int4"])
def test_quantized_pages_hit_preempt_and_reload_from_dram(family_dir, ps, name):
    expected = outputs(engine(family_dir, name, enable_prefix_caching=False), ps)
    llm = engine(family_dir, name)
    assert llm.layout.page_bytes == kv_bytes_per_block(llm.config.spec(str(family_dir)), codec(name), 8)
    assert outputs(llm, ps) == expected
    again = [llm.generate([p], GREEDY)[0] for p in ps]
    assert [o.outputs[0].token_ids for o in again] == expected and all(o.num_cached_tokens > 0 for o in again)
    page, window = llm.layout.page_bytes, llm.sliding.nbytes if llm.sliding else 0
    tight = engine(family_dir, name, kv_cache_bytes=page * 12 + window, max_num_batched_tokens=2048)
    assert outputs(tight, ps) == expected and tight.scheduler.preemptions > 0
    tiered = engine(family_dir, name, kv_cache_bytes=page * 16 + window, host_kv_bytes=page * 200)
    outputs(tiered, ps)
    back = [tiered.generate([p], GREEDY)[0] for p in ps]
    assert [o.outputs[0].token_ids for o in back] == expected
    assert sum(o.cached_tokens_per_tier["dram"] for o in back) > 0
