"""Speculative decoding priced from its verification pass, its draft and a stated acceptance length."""

from __future__ import annotations

import pytest

from agentkv.catalog import hardware, model
from agentkv.kvcache.sizing import codec
from agentkv.sim.speculative import Speculation, draft_seconds, seconds_per_token
from agentkv.sim.stepcost import Deployment, StepShape, decode_seconds, step_cost


def dep() -> Deployment:
    return Deployment(hardware("b200"), model("deepseek-v3"), codec("fp8"), tp=8, weight_dtype="fp4", ep=True)


def test_low_batch_mtp_buys_about_its_acceptance_length():
    """At batch 1 decode reads weights: verifying two tokens costs about what one does, so a 1.85-token
    acceptance (DeepSeek-V3's reported 85-90% for one MTP token) nearly halves the time per token."""
    d, mtp = dep(), Speculation(draft_tokens=1, acceptance_length=1.85)
    plain = decode_seconds(1, 4096, d)
    spec = seconds_per_token(1, 4096, d, mtp)
    assert 1.4 < plain / spec < 1.85


def test_nothing_accepted_costs_more_than_plain_decoding():
    d = dep()
    assert seconds_per_token(1, 4096, d, Speculation(3, 1.0)) > decode_seconds(1, 4096, d)


def test_large_batches_gain_less():
    """At batch 256 the step is closer to compute- and overhead-bound: verifying 2 tokens a sequence costs more."""
    d, mtp = dep(), Speculation(1, 1.85)
    gain = lambda b: decode_seconds(b, 4096, d) / seconds_per_token(b, 4096, d, mtp)  # noqa: E731
    assert gain(256) < gain(1)


def test_draft_cost_is_its_layers_share_of_a_decode_step():
    d, spec = dep(), Speculation(2, 2.0, draft_layers=1)
    one = step_cost(StepShape(decodes=(4096,) * 4), d)
    work = one.weights + one.attention + one.kv_write + one.communication
    assert draft_seconds(4, 4096, d, spec) == pytest.approx(2 * (work / 61 + d.coefficients.layer_floor_s))


@pytest.mark.parametrize("bad", [(0, 1.0), (1, 0.5), (1, 2.5)])
def test_acceptance_must_be_possible(bad):
    with pytest.raises(ValueError):
        Speculation(*bad)
