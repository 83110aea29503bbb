"""The engine end to end: greedy equality with HF generation, prefix cache on/off, batching, preemption,
the host-memory tier, sampling controls, chat template, cancellation."""

from __future__ import annotations

import pytest
import torch

from agentkv.engine.llm import LLM
from agentkv.engine.sequence import SamplingParams
from agentkv.engine.sliding import SlidingPages
from agentkv.engine.state_slots import StateSlots
from tests.engine.conftest import hf_model, prompts

GREEDY = SamplingParams(max_tokens=10, temperature=0, ignore_eos=True)


def hf_greedy(model, p: list[int], n: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([p]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0, min_new_tokens=n)
    return out[0, len(p):].tolist()


def kv_bytes(folder, pages: int, max_num_batched_tokens: int = 2048) -> int:
    """A KV budget of `pages` pool pages, plus the least the sliding layers' page group and the linear layers'
    state slots take where the model has them (they depend on the engine's limits; with so few pages the
    states' default share stays at its floor, so the pool gets exactly `pages`)."""
    llm = LLM(str(folder), dtype="float32", block_size=8, kv_cache_bytes=2**28)
    budget = llm.layout.page_bytes * pages
    if llm.sliding is not None:
        least = SlidingPages.floor(64, max_num_batched_tokens, llm.sliding.window, 8)
        budget += least * llm.sliding.layout.page_bytes
    if llm.states is not None:
        budget += StateSlots.floor(llm.runner.max_num_seqs) * llm.states.slot_bytes
    return budget


@pytest.fixture(scope="module")
def cases(checkpoint):
    _, folder = checkpoint
    ps = prompts(5, seed=11)
    ps.append([*ps[1][:40], 7, 8, 9])  # shares a 40-token prefix with prompt 1
    ref = hf_model(folder)
    return folder, ps, [hf_greedy(ref, p, GREEDY.max_tokens) for p in ps]


def test_greedy_matches_hf_batched_and_one_by_one_cache_on_and_off(cases):
    folder, ps, expected = cases
    llm = LLM(str(folder), dtype="float32", check_invariants=True, block_size=8, max_num_batched_tokens=64)
    batched = llm.generate(ps, GREEDY)
    assert [o.outputs[0].token_ids for o in batched] == expected
    again = [llm.generate([p], GREEDY)[0] for p in ps]  # now most prompts are cached
    assert [o.outputs[0].token_ids for o in again] == expected
    assert all(o.num_cached_tokens > 0 for o in again if len(o.prompt_token_ids) >= 16)
    off = LLM(str(folder), dtype="float32", check_invariants=True, block_size=8, enable_prefix_caching=False).generate(ps, GREEDY)
    assert [o.outputs[0].token_ids for o in off] == expected
    assert all(o.num_cached_tokens == 0 for o in off)


def test_prompt_sharing_a_prefix_reports_cached_tokens(cases):
    folder, ps, expected = cases
    llm = LLM(str(folder), dtype="float32", check_invariants=True, block_size=8)
    llm.generate([ps[1]], GREEDY)
    out = llm.generate([ps[-1]], GREEDY)[0]
    assert out.num_cached_tokens == 40 and out.outputs[0].token_ids == expected[-1]
    assert out.cached_tokens_per_tier["gpu"] == 40


def test_preemption_under_a_small_block_budget_keeps_outputs(cases):
    folder, ps, expected = cases
    llm = LLM(str(folder), dtype="float32", check_invariants=True, block_size=8, max_num_batched_tokens=64,
              kv_cache_bytes=kv_bytes(folder, 16, max_num_batched_tokens=64))
    out = llm.generate(ps, GREEDY)
    assert [o.outputs[0].token_ids for o in out] == expected
    assert llm.scheduler.preemptions > 0
    assert llm.scheduler.cache.reserved == 0


def test_host_tier_serves_demoted_blocks(cases):
    """A pool too small to keep every prompt, with a host-memory tier: blocks go down and come back, correct."""
    folder, ps, expected = cases
    bb = kv_bytes(folder, 1) - kv_bytes(folder, 0)
    llm = LLM(str(folder), dtype="float32", check_invariants=True, block_size=8, kv_cache_bytes=kv_bytes(folder, 24),
              host_kv_bytes=bb * 200)
    llm.generate(ps, GREEDY)
    again = [llm.generate([p], GREEDY)[0] for p in ps]
    assert [o.outputs[0].token_ids for o in again] == expected
    assert sum(o.cached_tokens_per_tier["dram"] for o in again) > 0  # some hits came back from host memory
    assert llm.scheduler.cache.stats.demoted[0] > 0


def test_sampling_controls(llama_dir):
    llm = LLM(str(llama_dir), dtype="float32", check_invariants=True)
    p = prompts(1, seed=2)[0]
    greedy = llm.generate([p], SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0].outputs[0].token_ids
    assert llm.generate([p], SamplingParams(max_tokens=8, temperature=1.0, top_k=1, ignore_eos=True))[0].outputs[0].token_ids == greedy
    assert llm.generate([p], SamplingParams(max_tokens=8, temperature=0.7, top_p=1e-6, ignore_eos=True))[0].outputs[0].token_ids == greedy
    a = llm.generate([p], SamplingParams(max_tokens=8, temperature=5.0, seed=1, ignore_eos=True))[0].outputs[0].token_ids
    b = llm.generate([p], SamplingParams(max_tokens=8, temperature=5.0, seed=1, ignore_eos=True))[0].outputs[0].token_ids
    c = llm.generate([p], SamplingParams(max_tokens=8, temperature=5.0, seed=2, ignore_eos=True))[0].outputs[0].token_ids
    assert a == b and a != c
    stop = llm.generate([p], SamplingParams(max_tokens=8, temperature=0, stop_token_ids=(greedy[2],), ignore_eos=True))[0]
    assert stop.outputs[0].finish_reason == "stop" and stop.outputs[0].token_ids == greedy[:2]
    n = llm.generate([p], SamplingParams(max_tokens=3, temperature=0, ignore_eos=True))[0]
    assert n.outputs[0].finish_reason == "length" and len(n.outputs[0].token_ids) == 3
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)


def test_stop_strings_and_text(llama_dir):
    llm = LLM(str(llama_dir), dtype="float32", check_invariants=True)
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
    out = llm.generate(["the agent reads a file"], params)[0]
    words = out.outputs[0].text.split()
    assert len(words) >= 2
    stop = next(w for w in words[1:] if w != words[0])  # the first word that differs from the first
    cut = llm.generate(["the agent reads a file"], SamplingParams(max_tokens=40, temperature=0, stop=(stop,), ignore_eos=True))[0]
    assert cut.outputs[0].finish_reason == "stop" and stop not in cut.outputs[0].text
    assert cut.outputs[0].stop_reason == stop  # the stop string that ended it, as vLLM reports it
    assert out.outputs[0].text.startswith(cut.outputs[0].text) and len(cut.outputs[0].token_ids) < len(out.outputs[0].token_ids)


def test_chat_uses_the_model_template(llama_dir):
    llm = LLM(str(llama_dir), dtype="float32", check_invariants=True)
    messages = [{"role": "user", "content": "fix the bug"}]
    rendered = llm.tokenizer.render_chat(messages)
    assert rendered.startswith("<|begin_of_text|>") and rendered.endswith("assistant <|end_header_id|> ")
    ids = llm.tokenizer.encode_chat(messages)
    assert ids[0] == 0 and ids.count(0) == 1  # one BOS: the template's, not a second from the tokenizer
    out = llm.chat([messages], SamplingParams(max_tokens=4, ignore_eos=True))[0]
    assert out.prompt_token_ids == ids and len(out.outputs[0].token_ids) == 4


def test_abort_frees_everything(llama_dir):
    llm = LLM(str(llama_dir), dtype="float32", check_invariants=True)
    rid = llm.add_request(prompts(1, seed=4)[0], SamplingParams(max_tokens=50, ignore_eos=True))
    llm.step()
    assert llm.abort(rid) and not llm.abort(rid)
    assert not llm.scheduler.has_work()
    llm.step()  # the release is carried out by the next plan
    assert llm.scheduler.cache.reserved == 0 and len(llm.pool.free) + len(llm.pool.page_of) == llm.pool.num_pages


def test_bad_inputs_are_named(llama_dir, tmp_path):
    llm = LLM(str(llama_dir), dtype="float32", check_invariants=True)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        llm.add_request([5] * 4000, SamplingParams(max_tokens=200))
    with pytest.raises(ValueError, match="empty prompt"):
        llm.add_request([], GREEDY)
    with pytest.raises(FileNotFoundError, match=r"config\.json"):
        LLM(str(tmp_path))


def test_generate_command(llama_dir):
    import json
    import subprocess
    import sys

    def cli(*extra):
        return subprocess.run([sys.executable, "-m", "agentkv.cli", "generate", "--model", str(llama_dir),
                               "--dtype", "float32", "--max-tokens", "5", "--json", *extra],
                              capture_output=True, text=True, timeout=120)

    r = cli("--prompt", "the agent reads", "--prompt", "fix the bug")
    assert r.returncode == 0, r.stderr
    outs = json.loads(r.stdout)
    assert len(outs) == 2 and all(o["finish_reason"] in ("length", "stop") for o in outs)
    chat = cli("--chat", "--system", "you fix code", "--prompt", "fix the bug")
    assert chat.returncode == 0, chat.stderr
    direct = LLM(str(llama_dir), dtype="float32", check_invariants=True).chat(
        [[{"role": "system", "content": "you fix code"}, {"role": "user", "content": "fix the bug"}]],
        SamplingParams(max_tokens=5, temperature=0))[0]
    assert json.loads(chat.stdout)[0]["token_ids"] == direct.outputs[0].token_ids
    bad = cli("--prompt", "x", "--temperature", "-1")
    assert bad.returncode == 2 and "temperature" in bad.stderr
