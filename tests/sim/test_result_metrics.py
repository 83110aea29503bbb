"""Per-request metrics a SimResult derives, checked against the step-cost model on a request alone."""

from __future__ import annotations

import numpy as np
import pytest

from agentkv.catalog import hardware, model
from agentkv.kvcache.sizing import codec
from agentkv.sim.simulator import SimConfig, simulate
from agentkv.sim.stepcost import Deployment, decode_seconds
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.builder import TraceBuilder


def test_a_lone_request_decodes_one_token_per_step_after_the_first():
    """TPOT is the time after the first token over the tokens after it: 10 decode steps for 11 output tokens
    (the first comes with the prefill), each the step cost of one sequence at its context."""
    b = TraceBuilder(64)
    b.add_request(b.add_session("lone", start=0.0), 0.0, 8_000, 11, np.arange(8_000 // 64))
    d = Deployment(hardware("h200"), model("llama-3.1-8b"), codec("bf16"))
    r = simulate(b.build(), SimConfig(d, arrival=ArrivalModel("trace")))
    steps = [decode_seconds(1, 8_000 + k, d) for k in range(1, 11)]
    assert float(r.tpot[0]) == pytest.approx(float(np.mean(steps)), rel=1e-3)
    assert float(r.e2e[0]) == pytest.approx(float(r.ttft[0]) + sum(steps), rel=1e-3)
