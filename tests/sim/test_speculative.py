"""Speculative decoding priced per token emitted: a verification of k+1 tokens a sequence, the draft's forward
passes, and a stated acceptance length; the simulator serves it through the same step cost."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from agentkv.catalog import hardware, model
from agentkv.kvcache.sizing import codec
from agentkv.sim.simulator import SimConfig, simulate
from agentkv.sim.speculative import Speculation
from agentkv.sim.stepcost import Deployment, StepShape, decode_seconds, step_cost
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.builder import TraceBuilder

MTP = Speculation(draft_tokens=1, acceptance_length=1.85)  # DeepSeek-V3's 85-90% (arXiv 2412.19437 §5.4.3)


def dep(spec: Speculation | None = None, **kw) -> Deployment:
    return Deployment(hardware("b200"), model("deepseek-v3"), codec("fp8"), tp=8, weight_dtype="fp4", ep=True,
                      speculation=spec, **kw)


def test_a_decode_step_is_priced_by_hand_from_its_verification_and_draft():
    """Batch 4 at 4096: per token emitted = (verify of 2 tokens a sequence + one draft pass through 1 of 61
    layers + its kernel floor) / 1.85."""
    plain, spec = dep(), dep(MTP)
    verify = step_cost(StepShape(decodes=(4096,) * 4, decode_queries=2), plain).total
    one = step_cost(StepShape(decodes=(4096,) * 4), plain)
    draft = (one.weights + one.attention + one.kv_write + one.communication) / 61 + plain.coefficients.layer_floor_s
    assert decode_seconds(4, 4096, spec) == pytest.approx((verify + draft) / 1.85, rel=1e-12)


def test_verification_reads_kv_once_and_computes_every_query():
    d = dep()
    one = step_cost(StepShape(decodes=(65536,) * 8), d)
    three = step_cost(StepShape(decodes=(65536,) * 8, decode_queries=3), d)
    assert one.kv_write * 3 == pytest.approx(three.kv_write)
    assert three.attention < 1.5 * one.attention  # 3x the FLOPs, the same KV read: memory-bound at decode


def test_low_batch_mtp_buys_about_its_acceptance_length():
    """At batch 1 decode reads weights: verifying two tokens costs about what one does, so TPOT falls by close
    to 1.85 (less the draft's layer and the second token's share)."""
    gain = decode_seconds(1, 4096, dep()) / decode_seconds(1, 4096, dep(MTP))
    assert 1.6 < gain < 1.85


def test_nothing_accepted_costs_more_than_plain_decoding():
    assert decode_seconds(1, 4096, dep(Speculation(3, 1.0))) > decode_seconds(1, 4096, dep())


def test_large_batches_gain_less():
    """At batch 256 the step is closer to compute- and overhead-bound: verifying 2 tokens a sequence costs more."""
    gain = lambda b: decode_seconds(b, 4096, dep()) / decode_seconds(b, 4096, dep(MTP))  # noqa: E731
    assert gain(256) < gain(1)


def test_prefill_chunks_are_priced_whole():
    """A step with a prefill chunk and no decodes costs the same with or without speculation; with decodes,
    the chunk's own cost is carried whole and only the decodes' addition is divided by the acceptance."""
    chunk = StepShape(prefills=((2048, 0),))
    assert step_cost(chunk, dep(MTP)).total == step_cost(chunk, dep()).total
    mixed = StepShape(prefills=((2048, 0),), decodes=(4096,) * 4)
    assert step_cost(chunk, dep()).total < step_cost(mixed, dep(MTP)).total < step_cost(mixed, dep()).total


def test_the_simulator_serves_a_request_at_the_speculative_step():
    """A lone request: TTFT unchanged (its prefill), decode time falls by the step cost's factor."""
    b = TraceBuilder(64)
    s = b.add_session("lone", start=0.0)
    b.add_request(s, 0.0, 4096, 201, np.arange(4096 // 64))
    trace = b.build()
    runs = [simulate(trace, SimConfig(d, arrival=ArrivalModel("trace"))) for d in (dep(), dep(MTP))]
    plain, spec = ((float(r.finish[0] - r.first_token[0]), float(r.ttft[0])) for r in runs)
    assert spec[1] == pytest.approx(plain[1], rel=1e-9)
    expected = decode_seconds(1, 4196, dep()) / decode_seconds(1, 4196, dep(MTP))  # at mid-output context
    assert plain[0] / spec[0] == pytest.approx(expected, rel=0.01)
    assert runs[1].decode_tokens == runs[0].decode_tokens == 200


@pytest.mark.parametrize("bad", [(0, 1.0), (1, 0.5), (1, 2.5)])
def test_acceptance_must_be_possible(bad):
    with pytest.raises(ValueError):
        Speculation(*bad)


def test_the_draft_layers_are_stored_beside_the_weights():
    """A draft layer is priced as one layer of the target's shape: for DeepSeek-V3's MTP module 1/61 more weights,
    that much less KV room (its README_WEIGHTS.md on huggingface.co/deepseek-ai/DeepSeek-V3, undated, read
    2026-12-05: 11.5B unique MTP parameters beside the main model's 671B, 1/58)."""
    plain, spec = dep(), dep(MTP)
    assert spec.weight_bytes == pytest.approx(plain.weight_bytes * (1 + 1 / 61))
    assert plain.kv_capacity_bytes - spec.kv_capacity_bytes == pytest.approx(plain.weight_bytes / 61)


def test_a_draft_deeper_than_the_model_is_refused():
    with pytest.raises(ValueError, match="draft_layers"):
        replace(dep(), speculation=Speculation(1, 1.5, draft_layers=62))
