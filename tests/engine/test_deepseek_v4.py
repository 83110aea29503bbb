"""DeepSeek-V4 on a tiny random checkpoint transformers 5.25 writes (sharded, published tensor names): a sliding
layer, two CSA layers (entries every 4 tokens, a lightning indexer keeping 3 of them per query) and an HCA layer
(every 16), window 8, mHC over 4 streams, a hash-routed MoE layer then bias-routed ones. Logits and greedy
continuations equal transformers' full forward on prompts crossing many compression windows; the engine and
kv-eval refuse the family with one line until its compressed page group exists."""

from __future__ import annotations

import json

import pytest
import torch

from agentkv.model.config import ModelConfig
from agentkv.model.loader import load_model
from tests.engine.conftest import VOCAB, jitter, prompts, write_tokenizer

ATOL = 1e-4  # fp32 against transformers' fp32 forward (as the other families' tests)
KINDS = ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention",
         "compressed_sparse_attention"]


def v4_model(seed: int = 3):
    """The tiny V4 with every constant-initialised part (norms, sinks, gate biases, mHC bases, the compressors'
    slot biases, the hash table) made random, so the test sees each of them."""
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

    torch.manual_seed(seed)
    cfg = DeepseekV4Config(
        vocab_size=VOCAB, hidden_size=64, moe_intermediate_size=32, num_hidden_layers=4, num_attention_heads=4,
        head_dim=32, q_lora_rank=32, partial_rotary_factor=0.25, num_experts_per_tok=2, n_routed_experts=8,
        n_shared_experts=1, layer_types=KINDS, mlp_layer_types=["hash_moe", "moe", "moe", "moe"],
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 16}, sliding_window=8,
        o_groups=2, o_lora_rank=16, index_n_heads=8, index_head_dim=16, index_topk=3, hc_mult=4,
        max_position_embeddings=4096, bos_token_id=0, eos_token_id=1)
    model = DeepseekV4ForCausalLM(cfg)
    jitter(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("position_bias", "gate.weight")):  # slot biases; routers away from near-ties
                p.normal_(0, 0.5)
        model.model.layers[0].mlp.gate.tid2eid.copy_(torch.stack([torch.randperm(8)[:2] for _ in range(VOCAB)]))
    return model.float().eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("deepseek_v4")
    v4_model().save_pretrained(str(path), max_shard_size="60KB")
    write_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def models(folder):
    from transformers import DeepseekV4ForCausalLM

    ours = load_model(str(folder), "float32", paged=False)
    return ours, DeepseekV4ForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def test_config_reads_layer_kinds_and_routing(folder):
    cfg = ModelConfig.from_dir(str(folder))
    v4 = cfg.v4
    assert cfg.family == "deepseek_v4" and v4 is not None
    assert v4.kinds == ("sliding", "csa", "hca", "csa")
    assert [v4.ratio_of(i) for i in range(4)] == [0, 4, 16, 4]
    assert (v4.dim, v4.rope_dim, v4.window, v4.index_topk, v4.hc_mult) == (32, 8, 8, 3, 4)
    assert v4.hash_layers == (True, False, False, False)
    assert len(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]) > 1


def test_logits_equal_transformers_across_compression_windows(models):
    """70 tokens: 17 CSA entries (the indexer keeps 3 of them), 4 HCA entries, the raw window long passed."""
    ours, hf = models
    for prompt in prompts(3, seed=4, lo=40, hi=71):
        ids = torch.tensor(prompt)
        want = hf(ids[None], use_cache=False).logits[0]
        assert (ours.logits(ours(ids)) - want).abs().max().item() < ATOL


def test_greedy_equals_transformers_full_forward(models):
    """Greedy continuations past further window closings: each token transformers' argmax of its full forward,
    and the same as transformers' `generate` (its cached compressors and indexer)."""
    ours, hf = models
    for prompt in prompts(2, seed=5, lo=30, hi=50):
        seq = list(prompt)
        for _ in range(12):
            seq.append(int(hf(torch.tensor(seq)[None], use_cache=False).logits[0, -1].argmax()))
        got = ours.greedy(prompt, 12)
        assert got == seq[len(prompt) :]
        cached = hf.generate(torch.tensor([prompt]), max_new_tokens=12, min_new_tokens=12, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
        assert got == cached[0, len(prompt) :].tolist()


def test_indexer_choice_matters(models):
    """The indexer's top-k binds: letting every closed entry through changes the logits (the test above sees it)."""
    ours, _ = models
    ids = torch.tensor(prompts(1, seed=6, lo=60, hi=61)[0])
    before = ours.logits(ours(ids))
    for layer in ours.model.layers:
        if layer.attn.kind == "csa":
            layer.attn.indexer.topk = 10**6
    try:
        assert (ours.logits(ours(ids)) - before).abs().max().item() > 1e-3
    finally:
        for layer in ours.model.layers:
            if layer.attn.kind == "csa":
                layer.attn.indexer.topk = 3


def test_engine_refuses_until_pages_exist(folder):
    from agentkv.engine.llm import LLM

    with pytest.raises(ValueError, match="compressed page group"):
        load_model(str(folder), "float32")
    with pytest.raises(ValueError, match="runs whole sequences only"):
        LLM(str(folder), dtype="float32")


@pytest.mark.parametrize("command", ["kv-eval", "serve"])
def test_commands_refuse_in_one_line(folder, command):
    """`agentkv kv-eval` and `agentkv serve` (the entry point as installed) say why, in one line, no traceback."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", "import sys; from agentkv.cli import main; sys.exit(main())", command,
                          "--model", str(folder), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    lines = run.stderr.strip().splitlines()
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "DeepSeek-V4 (1 sliding + 2 CSA (an entry per 4 tokens, top 3) + 1 HCA (per 16), raw window 8) runs " \
        "whole sequences only" in lines[-1] and "compressed page group" in lines[-1]


def test_bad_layer_types_name_the_field(folder, tmp_path):
    raw = json.loads((folder / "config.json").read_text())
    raw["layer_types"] = [*KINDS[:3], "full_attention"]
    with pytest.raises(ValueError, match="field 'layer_types'"):
        ModelConfig.from_hf(raw, "config.json")


def test_spec_counts_transformers_weights_and_prices_each_kind(folder, models):
    """The config's groups are the catalog's V4 kinds; its parameter count equals transformers' weights (norms,
    sinks and biases aside), so the report can size a V4 folder it is given."""
    from agentkv.kvcache.sizing import codec, entry_bytes, kv_bytes_per_token

    cfg = ModelConfig.from_dir(str(folder))
    groups = cfg.layer_groups()
    assert [(g.kind, g.layers, g.ratio, g.top_k) for g in groups] == \
        [("sliding", 1, 1, 0), ("compressed", 2, 4, 3), ("compressed", 1, 16, 0)]
    assert all(g.window == 8 and g.head_dim == 32 for g in groups) and groups[0].shared_kv
    spec = cfg.spec("m")
    weights = sum(p.numel() for p in models[1].parameters() if p.dim() > 1)
    assert spec.params_total == weights
    fp8 = codec("fp8")
    csa, hca = (entry_bytes(g, spec, fp8, 16) for g in groups[1:])
    assert csa - hca == 16 / 2 + 4  # a CSA entry adds its indexer's key: 16 fp4 values and a 4-byte scale
    assert kv_bytes_per_token(spec, fp8, 16) == 2 * csa / 4 + hca / 16  # the sliding layer's window adds none


def test_bf16_loads_and_follows_fp32(folder, models):
    """bf16 weights (the compressors, indexer weights, mHC mixes, sinks and router bias kept fp32, as
    transformers keeps them) run and give the fp32 model's next-token distribution."""
    ids = torch.tensor(prompts(1, seed=7, lo=40, hi=41)[0])
    half = load_model(str(folder), "bfloat16", paged=False)
    assert half.model.layers[1].attn.compressor.wkv.weight.dtype == torch.float32
    p, q = (m.logits(m(ids))[-1].softmax(-1) for m in (models[0], half))
    assert (p - q).abs().sum().item() < 0.1
