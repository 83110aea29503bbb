"""Speculative decoding as a deployment setting: stated on the command line, carried into every rung's simulated
deployment, named in the mode, refused when its acceptance is missing or impossible, and its gain by batch."""

from __future__ import annotations

import pytest

from agentkv.cli import UsageError, deployment_spec
from agentkv.report.ladder import LADDER, DeploymentSpec, rung_config
from agentkv.report.levers import speculation_gains
from agentkv.sim.speculative import Speculation
from agentkv.workload.arrivals import ArrivalModel

SETTING = "hardware=b200,model=deepseek-v3,tp=8,weight_dtype=fp4,ep=true,spec_tokens=1,spec_acceptance=1.85"


def test_the_setting_reaches_every_rung_and_the_mode():
    spec = deployment_spec(SETTING, None, None)
    assert spec.speculation == Speculation(1, 1.85, 1)
    for rung in LADDER:
        assert rung_config(spec, rung, ArrivalModel(), 1).deployment.speculation == Speculation(1, 1.85, 1)
    assert spec.mode == "TP8 + EP8 + speculative (1 drafted, 1.85 emitted a step)"
    assert DeploymentSpec().speculation is None
    assert rung_config(DeploymentSpec(), LADDER[0], ArrivalModel(), 1).deployment.speculation is None


@pytest.mark.parametrize("setting, says", [
    ("spec_tokens=2", "needs spec_tokens >= 1 and spec_acceptance"),
    ("spec_acceptance=1.5", "needs spec_tokens >= 1 and spec_acceptance"),
    ("spec_tokens=1,spec_acceptance=2.5", "acceptance_length=2.5 must be in 1..2"),
    ("spec_tokens=1,spec_acceptance=1.5,spec_draft_layers=0", "draft_layers must be >= 1"),
])
def test_an_unstated_or_impossible_acceptance_is_refused_in_one_line(setting, says):
    with pytest.raises(UsageError, match=says) as e:
        deployment_spec(setting, None, None)
    assert "\n" not in str(e.value) and str(e.value).startswith("--deployment: ")


def test_speculation_buys_most_output_speed_at_small_batches():
    d = rung_config(deployment_spec(SETTING, None, None), LADDER[-1], ArrivalModel(), 1).deployment
    gains = speculation_gains(d, 8192)
    assert [g.batch for g in gains] == [1, 8, 64, 256]
    assert gains[0].speculative_tps > 1.5 * gains[0].plain_tps
    assert gains[0].cost_ratio < min(g.cost_ratio for g in gains[1:])  # a MoE's experts re-amortise at 64+
    assert all(g.cost_ratio == pytest.approx(g.plain_tps / g.speculative_tps) for g in gains)
