"""Qwen3-Next (gated DeltaNet + gated full attention, MoE with a shared expert) against transformers on a tiny
random checkpoint: the model's logits (prefill in pieces, decode, states at block boundaries), and the engine's
greedy continuations after a prefix hit restored from a snapshot, a preemption and a reload from DRAM; its state
slots equal what `kvcache/sizing.py` prices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from agentkv.codecs import get_codec
from agentkv.engine.llm import LLM
from agentkv.engine.pages import PageLayout
from agentkv.engine.sequence import SamplingParams
from agentkv.kernels.attention import SeqSlice
from agentkv.kvcache.sizing import codec, kv_bytes_per_block, state_bytes
from agentkv.model.deltanet import LayerState, StateSpan, StateStep, state_slot_bytes, state_views
from agentkv.model.loader import load_model
from tests.engine.conftest import hf_model, prompts, write_checkpoint
from tests.engine.test_families import test_kv_eval_scores_what_transformers_scores as kv_eval_check

GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """4 layers: 3 gated DeltaNet (2 key heads, 4 value heads of 16, conv 4) and 1 gated full attention (RoPE on
    a quarter of 32 dims); layer 1 a dense MLP, the others 8 experts top 2 beside a shared expert."""
    return write_checkpoint(tmp_path_factory.mktemp("qwen3_next"), "qwen3_next", seed=3)


def backend_of(model):
    return next(layer.self_attn for layer in model.model.layers if not layer.linear).backend


def states(model, slots: int = 4, n_pages: int = 64, bs: int = 8) -> tuple[list, StateStep]:
    """Every layer's cache in model order: pages for the full layers, zeroed state slots for the linear ones."""
    cfg, step = model.config, StateStep()
    layout = PageLayout.of(get_codec("fp32"), cfg.num_layers - sum(cfg.linear_layers), bs, cfg.num_kv_heads,
                           cfg.head_dim)
    backend_of(model).bind(4, n_pages, torch.device("cpu"))
    pages = iter(layout.views(torch.zeros(n_pages, layout.page_bytes, dtype=torch.uint8)))
    slab = torch.zeros(slots, state_slot_bytes(cfg, torch.float32), dtype=torch.uint8)
    linear = iter(state_views(cfg, slab, torch.float32, step))
    return [next(linear) if cfg.is_linear_layer(i) else next(pages) for i in range(cfg.num_layers)], step


def run(model, caches, step, tokens, start, table, slot=0, snapshots=(), bs=8):
    backend = backend_of(model)
    backend.release_row(0)
    meta = backend.prepare([SeqSlice(0, table, len(tokens), start + len(tokens))], int(len(tokens) > 1), bs)
    decode = len(tokens) == 1
    step.prefills = [] if decode else [StateSpan(slot, len(tokens), list(snapshots))]
    step.decode_slots = torch.tensor([slot]) if decode else None
    step.decode_snapshots = []
    return model.logits(model(torch.tensor(tokens), torch.arange(start, start + len(tokens)), caches, meta))


def test_prefill_decode_and_a_snapshot_match_transformers(folder):
    """Prefill 150 tokens (three pieces of the chunked rule), decode 10 more; then a second sequence restored
    from the snapshot taken at token 40 (block 5) computes only the rest and matches too."""
    ours, ref = load_model(str(folder), "float32"), hf_model(folder)
    p = prompts(1, seed=3, lo=160, hi=161)[0]
    caches, step = states(ours)
    table = list(range(1, 22))
    with torch.no_grad():
        full = ref(torch.tensor([p])).logits[0]
    got = run(ours, caches, step, p[:150], 0, table, snapshots=[(40, 2)])
    assert torch.allclose(got, full[:150], atol=1e-4)
    for i in range(150, 160):
        assert torch.allclose(run(ours, caches, step, [p[i]], i, table)[0], full[i], atol=1e-4), i
    for layer in caches:  # slot 1 takes slot 2's snapshot: the state after 40 tokens
        if isinstance(layer, LayerState):
            layer.conv[1], layer.recurrent[1] = layer.conv[2], layer.recurrent[2]
    got = run(ours, caches, step, p[40:70], 40, table, slot=1)
    assert torch.allclose(got, full[40:70], atol=1e-4)


def engine(folder: Path, **kw) -> LLM:
    return LLM(str(folder), dtype="float32", block_size=8, check_invariants=True, **kw)


@pytest.fixture(scope="module")
def ps() -> list[list[int]]:
    return prompts(4, seed=9, lo=30, hi=70)


def hf_greedy(folder: Path, ps: list[list[int]]) -> list[list[int]]:
    """transformers' own greedy continuations (its DeltaNet cache, its chunked and recurrent rule)."""
    ref = hf_model(folder)
    n = GREEDY.max_tokens
    with torch.no_grad():
        return [ref.generate(torch.tensor([p]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(p):].tolist() for p in ps]


@pytest.fixture(scope="module")
def expected(folder, ps) -> list[list[int]]:
    return hf_greedy(folder, ps)


def tokens(outs) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in outs]


def test_greedy_equals_transformers_and_a_hit_restores_a_snapshot(folder, ps, expected):
    llm = engine(folder)
    assert tokens(llm.generate(ps, GREEDY)) == expected
    again = [llm.generate([p], GREEDY)[0] for p in ps]
    assert tokens(again) == expected
    assert all(o.num_cached_tokens > 0 for o in again)
    # each prompt's deepest boundary a repeat can hit kept a snapshot: nothing before it is recomputed
    assert llm.states.restored_tokens == sum((len(p) - 1) // 8 * 8 for p in ps) and llm.states.rewound_tokens == \
        sum(o.num_cached_tokens - (len(p) - 1) // 8 * 8 for o, p in zip(again, ps, strict=True))


def test_a_hit_without_a_snapshot_falls_back_to_an_earlier_one(folder, ps, expected):
    """Prompt 3 (67 tokens) keeps snapshots at its repeat boundary (block 8) and, with every=2, at blocks 2, 4, 6.
    A prompt sharing its first 3 blocks hits 24 tokens: it restores block 2 and recomputes one block; with no
    periodic snapshots, it recomputes from token 0. Usage counts only what was served."""
    shared = ps[3][:24] + ps[0][:20]
    assert (len(ps[3]) - 1) // 8 == 8
    for every, restored in [(2, 16), (0, 0)]:
        llm = engine(folder)
        llm.cache.policy.snapshot_every = every
        llm.generate([ps[3]], GREEDY)
        out = llm.generate([shared], GREEDY)[0]
        assert (llm.states.restored_tokens, llm.states.rewound_tokens) == (restored, 24 - restored)
        assert out.num_cached_tokens == restored
        assert tokens([out]) == tokens(engine(folder, enable_prefix_caching=False).generate([shared], GREEDY))


def test_the_next_turn_restores_the_state_at_the_end_of_the_reply(folder, ps):
    """An agent's next turn extends prompt + reply: its hit reaches into the reply, where the reply's latest
    boundary kept a snapshot (no periodic ones here), so nothing before the hit is recomputed."""
    llm = engine(folder)
    llm.cache.policy.snapshot_every = 0
    first = llm.generate([ps[2]], SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))[0]
    turn = [*ps[2], *first.outputs[0].token_ids, *ps[1][:10]]  # 44 + 12 + 10 tokens
    before = llm.states.restored_tokens
    out = llm.generate([turn], GREEDY)[0]
    assert out.num_cached_tokens == llm.states.restored_tokens - before == 55 // 8 * 8  # 55 tokens were fed
    assert tokens([out]) == hf_greedy(folder, [turn])


def budget(folder: Path, pages: int, kv_codec: str = "fp32", slots: int = 8) -> int:
    """KV bytes for `pages` pages beside `slots` state slots (4 sequences' live states, the rest snapshots)."""
    llm = engine(folder, kv_cache_bytes=2**24, kv_codec=kv_codec)
    return pages * llm.layout.page_bytes + slots * llm.states.slot_bytes


def test_preemption_recomputes_from_a_snapshot(folder):
    """Four prompts of 3 blocks fill 12 pages; decoding needs a 4th block each: one is preempted, its live slot
    freed, and re-admitted with its state rebuilt from the deepest boundary its hit has a snapshot for (here its
    blocks went to the others: from token 0)."""
    short = prompts(4, seed=5, lo=17, hi=24)
    tight = engine(folder, kv_cache_bytes=budget(folder, 12), max_num_seqs=4)
    assert tokens(tight.generate(short, GREEDY)) == hf_greedy(folder, short)
    assert tight.scheduler.preemptions > 0


def test_reload_from_dram_keeps_greedy_equal(folder, ps, expected):
    """Pages demoted to DRAM come back; the state comes from a snapshot still on the device, or is recomputed
    from the last one (snapshots do not travel with pages)."""
    tiered = engine(folder, kv_cache_bytes=budget(folder, 16), host_kv_bytes=budget(folder, 200), max_num_seqs=4)
    tiered.generate(ps, GREEDY)
    back = [tiered.generate([p], GREEDY)[0] for p in ps]
    assert tokens(back) == expected
    assert sum(o.cached_tokens_per_tier["dram"] for o in back) > 0
    # 8 slots keep 4 snapshots: some hits restored one, others found theirs evicted and recomputed from token 0
    assert tiered.states.restored_tokens > 0 and tiered.states.rewound_tokens > 0


def test_the_spec_counts_the_checkpoints_parameters(folder):
    """What the cost-aware policy reads (`ModelConfig.spec`): the checkpoint's parameters, norms aside."""
    spec = engine(folder, kv_cache_bytes=2**24).runner.spec
    assert spec.params_total == pytest.approx(sum(p.numel() for p in hf_model(folder).parameters()), rel=0.005)


def test_state_slots_are_what_sizing_prices_and_the_start_up_line_names_them(folder):
    from agentkv.server.startup import summary

    llm = engine(folder, kv_cache_bytes=2**24)
    spec = llm.config.spec(str(folder))
    assert llm.states.slot_bytes == state_bytes(spec, codec("fp32"), 8) == 3 * (4 * 16 * 16 + 3 * (2 * 2 * 16 + 4 * 16)) * 4
    assert llm.layout.page_bytes == kv_bytes_per_block(spec, codec("fp32"), 8)
    line = summary(llm, "m", 4096, None, 0)
    assert f"4 layers: 1 full + 3 deltanet state ({llm.states.slab.shape[0]:,} slots of 16,896 B" in line


@pytest.mark.parametrize("name", ["fp8", "int8", "int4"])
def test_quantized_pages_hit_preempt_and_reload_as_a_cache_off_run(folder, ps, name):
    """The full layers' pages in fp8/int8/int4 (the states stay in the model's dtype): prefix hits, preemptions
    and a DRAM reload (with 16 snapshots kept) give what the same codec gives with the prefix cache off."""
    short = prompts(4, seed=5, lo=17, hi=24)
    cache_off = engine(folder, kv_codec=name, enable_prefix_caching=False)
    expected = tokens(cache_off.generate(short, GREEDY))
    llm = engine(folder, kv_codec=name)
    assert tokens(llm.generate(short, GREEDY)) == expected
    again = [llm.generate([p], GREEDY)[0] for p in short]
    assert tokens(again) == expected and all(o.num_cached_tokens > 0 for o in again)
    tight = engine(folder, kv_codec=name, kv_cache_bytes=budget(folder, 12, name), max_num_seqs=4)
    assert tokens(tight.generate(short, GREEDY)) == expected and tight.scheduler.preemptions > 0
    tiered = engine(folder, kv_codec=name, kv_cache_bytes=budget(folder, 16, name, slots=20), max_num_seqs=4,
                    host_kv_bytes=budget(folder, 200, name), state_snapshots=16)
    tiered.generate(ps, GREEDY)
    back = [tiered.generate([p], GREEDY)[0] for p in ps]
    assert tokens(back) == tokens(cache_off.generate(ps, GREEDY))
    assert sum(o.cached_tokens_per_tier["dram"] for o in back) > 0


def test_kv_eval_scores_what_transformers_scores(folder):
    """kv-eval runs the linear layers over a state slot of their own and scores the codecs on the full ones."""
    kv_eval_check(folder)



def test_the_published_shape_gives_the_catalogs_state_bytes():
    """Qwen3-Next-80B-A3B's config.json fields (as the catalog's entry cites them: huggingface.co/Qwen/
    Qwen3-Next-80B-A3B-Instruct, read 2026-12-03), read by the engine's ModelConfig, give the layer groups and
    DeltaNet state bytes the simulator prices from `agentkv/data/models.toml`."""
    from agentkv.catalog import model
    from agentkv.model.config import ModelConfig

    raw = {"architectures": ["Qwen3NextForCausalLM"], "hidden_size": 2048, "intermediate_size": 5120,
           "num_hidden_layers": 48, "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256,
           "vocab_size": 151936, "full_attention_interval": 4, "linear_num_key_heads": 16,
           "linear_num_value_heads": 32, "linear_key_head_dim": 128, "linear_value_head_dim": 128,
           "linear_conv_kernel_dim": 4, "num_experts": 512, "num_experts_per_tok": 10, "moe_intermediate_size": 512,
           "shared_expert_intermediate_size": 512, "partial_rotary_factor": 0.25, "torch_dtype": "bfloat16"}
    cfg = ModelConfig.from_hf(raw)
    catalog = model("qwen3-next-80b-a3b")
    assert cfg.layer_groups() == catalog.groups and cfg.rotary_dim == 64
    spec = cfg.spec("qwen3-next")  # what the cost-aware policy reads: 80B in all, as the model card says
    assert spec.params_total == pytest.approx(catalog.params_total, rel=0.01)
    bad = [({"linear_num_value_heads": 24}, "field 'linear_num_value_heads': 24 is not a multiple"),
           ({"layer_types": ["mamba"] * 48}, "field 'layer_types': expected 48 of linear_attention, full_attention"),
           ({"linear_key_head_dim": None}, "field 'linear_key_head_dim': missing")]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            ModelConfig.from_hf({**raw, **change}, "ckpt/config.json")
