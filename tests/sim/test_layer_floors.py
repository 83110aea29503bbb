"""The floors a step pays whatever bytes it moves: every layer's, a Gated-DeltaNet layer's extra kernels, and a
MoE layer's fused-experts call at few tokens (the terms that close Qwen3-Next's batch-1 decode)."""

from __future__ import annotations

import pytest

from agentkv.catalog import hardware, model
from agentkv.kvcache.sizing import codec
from agentkv.sim.stepcost import Deployment, StepShape, decode_seconds, step_cost, weight_seconds


def dep(name: str, weights: str = "fp8", tp: int = 1) -> Deployment:
    return Deployment(hardware("h200"), model(name), codec("bf16"), tp=tp, weight_dtype=weights)


def test_a_hybrid_step_pays_a_floor_for_each_deltanet_layer():
    """Qwen3-Next: 48 layers, 36 of them Gated DeltaNet. Batch 1: 0.3 ms step + 0.465 ms / (1 + 1/8.73) for the
    sequence + 48 x 15 us + 36 x 41 us."""
    d = dep("qwen3-next-80b-a3b")
    c = d.coefficients
    seq = c.seq_overhead_s / (1 + 1 / c.seq_saturation)
    expected = c.step_overhead_s + seq + 48 * c.layer_floor_s + 36 * c.linear_layer_floor_s
    assert step_cost(StepShape(decodes=(1024,)), d).overhead == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(3e-4 + 4.65e-4 / (1 + 1 / 8.73) + 48 * 1.5e-5 + 36 * 4.1e-5)


def test_a_model_without_linear_layers_pays_only_the_common_floor():
    d = dep("llama-3.1-8b", "bf16")
    c = d.coefficients
    assert d.layer_floors_s == pytest.approx(32 * c.layer_floor_s)


def test_the_fused_experts_floor_binds_at_batch_one_and_not_at_large_batches():
    """Batch 1 reads 10 of 512 experts a layer (1.5 GB in all at fp8: 0.38 ms at 85% of 4.8 TB/s), below 48 calls
    of 29.45 us; at 256 tokens the experts' bytes and FLOPs dominate and the floor is no longer seen."""
    d = dep("qwen3-next-80b-a3b")
    m, c = d.model, d.coefficients
    dense = max(2 * m.dense_params / (d.flops * c.gemm_efficiency), m.dense_params * d.dense_bytes
                / (d.hardware.hbm_bw * c.hbm_efficiency))
    assert weight_seconds(1, d) == pytest.approx(dense + 48 * c.moe_layer_floor_s, rel=1e-9)
    unfloored = Deployment(d.hardware, m, d.kv_codec, weight_dtype="fp8",
                           coefficients=type(c)(moe_layer_floor_s=0.0))
    assert weight_seconds(256, d) == weight_seconds(256, unfloored)


def test_batch_one_decode_is_what_the_published_run_measured():
    """Qwen3-Coder-Next FP8 on one H200 at 1k context decodes at 210.8 tok/s (Millstone AI, 2026-02-09); priced at
    its bytes alone it was 433 tok/s."""
    d = dep("qwen3-next-80b-a3b")
    assert 1 / decode_seconds(1, 1536, d) == pytest.approx(210.8, rel=0.05)
    bytes_only = Deployment(d.hardware, d.model, d.kv_codec, weight_dtype="fp8",
                            coefficients=type(d.coefficients)(moe_layer_floor_s=0.0, linear_layer_floor_s=0.0))
    assert 1 / decode_seconds(1, 1536, bytes_only) > 400
