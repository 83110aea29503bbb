"""KV bytes from the per-layer attention description, against figures worked by hand from each published
config.json (bf16: 2 bytes a value)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agentkv.catalog import LayerGroup, hardware, model
from agentkv.kvcache.sizing import codec, kv_bytes, kv_bytes_per_block, state_bytes
from agentkv.sim.stepcost import Deployment, StepShape, attention_work

BF16 = codec("bf16")


def gpt_oss(ctx: int) -> float:  # 18 full + 18 sliding(128) layers of 8 KV heads x 64: 2048 B per token-layer
    return 18 * 2048 * ctx + 18 * 2048 * min(ctx, 128)


def gemma3(ctx: int) -> float:  # 10 global + 52 local(1024) layers of 16 KV heads x 128: 8192 B per token-layer
    return 10 * 8192 * ctx + 52 * 8192 * min(ctx, 1024)


def scout(ctx: int) -> float:  # 12 global (NoPE) + 36 chunked(8192) layers of 8 KV heads x 128: 4096 B
    return 12 * 4096 * ctx + 36 * 4096 * min(ctx, 8192)


def qwen3_next(ctx: int) -> float:  # 12 full layers of 2 KV heads x 256 (2048 B) + 36 DeltaNet states
    state = (32 * 128 * 128 + 3 * (2 * 16 * 128 + 32 * 128)) * 2
    return 12 * 2048 * ctx + 36 * state


def v4_flash(ctx: int) -> float:
    """2 window-only layers, 21 CSA (ratio 4, FP4 indexer key: 64 B of values + a 4 B scale per entry), 20 HCA
    (ratio 128); one shared 512-value K=V vector (1024 B) per entry; every layer's raw 128-token window."""
    return 21 * (ctx // 4) * (1024 + 68) + 20 * (ctx // 128) * 1024 + 43 * 1024 * min(ctx, 128)


def v4_pro(ctx: int) -> float:
    """compress_ratios of its config.json: 30 CSA (ratio 4, FP4 indexer keys), 31 HCA (ratio 128), no
    window-only layer; every layer's raw 128-token window."""
    return 30 * (ctx // 4) * (1024 + 68) + 31 * (ctx // 128) * 1024 + 61 * 1024 * min(ctx, 128)


@pytest.mark.parametrize("name,by_hand", [("gpt-oss-120b", gpt_oss), ("gemma-3-27b", gemma3),
                                          ("llama-4-scout", scout), ("qwen3-next-80b-a3b", qwen3_next),
                                          ("deepseek-v4-flash", v4_flash), ("deepseek-v4-pro", v4_pro)])
@pytest.mark.parametrize("ctx", [8192, 131072, 1048576])
def test_kv_bytes_at_context_match_the_published_configs(name, by_hand, ctx):
    assert kv_bytes(model(name), BF16, ctx) == pytest.approx(by_hand(ctx))


def test_long_context_models_keep_far_less_than_one_constant_per_token():
    """At 1M tokens V4-Flash keeps ~8% and V4-Pro ~11% of V3.2's KV (published: 7% and 10%)."""
    v32 = kv_bytes(model("deepseek-v3.2"), BF16, 2**20)
    assert 0.06 < kv_bytes(model("deepseek-v4-flash"), BF16, 2**20) / v32 < 0.09
    assert 0.09 < kv_bytes(model("deepseek-v4-pro"), BF16, 2**20) / v32 < 0.13
    assert kv_bytes(model("gemma-3-27b"), BF16, 131072) < 0.65 * 131072 * 62 * 8192


@pytest.mark.parametrize("name,layers,compressor_mib", [("deepseek-v4-flash", 43, 11.6), ("deepseek-v4-pro", 61, 17.8)])
def test_v4_state_holds_the_compressors_fp32_partial_windows(name, layers, compressor_mib):
    """Per sequence, beside the raw 128-token windows: the compressor's fp32 partial window of every compressed
    layer (~11.6 MiB for Flash, ~17.8 MiB for Pro, as vLLM's V4 code keeps it)."""
    raw = layers * 128 * 1024
    assert (state_bytes(model(name), BF16) - raw) / 2**20 == pytest.approx(compressor_mib, abs=0.1)


def test_native_and_extended_windows_are_two_fields():
    m = model("qwen3-32b")
    assert (m.context, m.context_extended) == (40960, 131072)  # shipped config; YaRN factor 4
    assert model("llama-3.1-8b").context_extended == 0
    with pytest.raises(ValueError, match="below the native"):
        replace(m, context_extended=32768)


def test_mla_latent_is_replicated_on_every_tp_rank():
    m = model("deepseek-v3")
    one = 61 * (512 + 64) * 2 * 16
    assert kv_bytes_per_block(m, BF16, 16) == one
    assert kv_bytes_per_block(m, BF16, 16, tp=8) == 8 * one
    assert kv_bytes(m, BF16, 1000, tp=8) == pytest.approx(8 * 61 * 576 * 2 * 1000)


def test_kv_heads_fewer_than_tp_ranks_are_replicated():
    assert kv_bytes_per_block(model("llama-3.1-70b"), BF16, 16, tp=8) == kv_bytes_per_block(
        model("llama-3.1-70b"), BF16, 16)  # 8 KV heads: one per rank, nothing copied
    coder = model("qwen3-coder-30b-a3b")  # 4 KV heads on 8 ranks: each rank keeps one, every head twice
    assert kv_bytes_per_block(coder, BF16, 16, tp=8) == 2 * kv_bytes_per_block(coder, BF16, 16)
    assert kv_bytes_per_block(coder, BF16, 16, tp=8) == 48 * 2 * 8 * 128 * 2 * 16


def test_bounded_layers_are_a_per_sequence_state_not_pages():
    m = model("gpt-oss-120b")
    assert kv_bytes_per_block(m, BF16, 16) == 18 * 2048 * 16  # only the full layers grow with the context
    assert state_bytes(m, BF16) == 18 * 2048 * 128
    assert state_bytes(model("llama-3.1-8b"), BF16) == 0


def test_sliding_attention_costs_its_window_not_the_context():
    """A decode at 100k attends 100k keys in a full layer, 128 in a sliding one."""
    h = hardware("h200")
    oss = model("gpt-oss-120b")
    all_full = replace(oss, attention=(LayerGroup("full", 36),))
    hybrid, dense = (attention_work(StepShape(decodes=(100_000,)), Deployment(h, m, BF16))[1]
                     for m in (oss, all_full))
    assert hybrid.flops == pytest.approx(dense.flops * (100_000 + 128) / 200_000)
    assert hybrid.io_bytes == pytest.approx(dense.io_bytes * (100_000 + 128) / 200_000)


def test_bad_attention_groups_name_the_problem():
    with pytest.raises(ValueError, match="cover 35 layers, not 36"):
        replace(model("gpt-oss-120b"), attention=(LayerGroup("full", 35),))
    with pytest.raises(ValueError, match="sliding layers need window > 0"):
        LayerGroup("sliding", 4)
    with pytest.raises(ValueError, match="attention kind 'ring'"):
        LayerGroup("ring", 4)
