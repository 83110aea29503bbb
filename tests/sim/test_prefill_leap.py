"""A long prompt's full chunks run as one event (sim/prefill_leap.py) give the step-by-step run's results exactly:
every request's times and hits the same, the totals the same sums up to the order they are added in."""

from __future__ import annotations

import numpy as np
import pytest

from agentkv.catalog import hardware, model
from agentkv.kvcache.sizing import codec
from agentkv.sim import simulator
from agentkv.sim.simulator import SimConfig, simulate
from agentkv.sim.stepcost import Deployment
from agentkv.workload.arrivals import ArrivalModel
from tests.sim.test_same_results import trace

CONFIGS = {
    "no_prefix_cache": dict(prefix_cache=False, router="least-loaded"),
    "tiers": dict(dram_bytes=2e9, disk_bytes=8e9),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_leaping_a_prompts_chunks_changes_nothing(name, monkeypatch):
    d = Deployment(hardware("h200"), model("llama-3.1-8b"), codec("bf16"))
    cfg = SimConfig(d, replicas=2, max_batched_tokens=512, arrival=ArrivalModel("concurrency", 6), **CONFIGS[name])
    shared = trace()  # 36 sessions whose prompts grow to ~15k tokens: many 512-token chunks
    leaps = []
    real = simulator.prefill_leap

    def counted(*args):
        leap = real(*args)
        leaps.extend([leap] if leap is not None else [])
        return leap

    monkeypatch.setattr(simulator, "prefill_leap", counted)
    leapt = simulate(shared, cfg)
    assert sum(len(leap.chunks) for leap in leaps) > 200  # 3,035 without a prefix cache, 256 with
    monkeypatch.setattr(simulator, "prefill_leap", lambda *args: None)
    stepped = simulate(shared, cfg)
    for field in ("arrival", "first_token", "finish", "cached", "replica", "preemptions", "busy_s"):
        assert np.array_equal(getattr(leapt, field), getattr(stepped, field), equal_nan=True), field
    assert leapt.steps == stepped.steps and leapt.prefill_tokens == stepped.prefill_tokens
    for total in ("prefill_s", "decode_s", "cached_s", "transfer_s"):
        assert getattr(leapt, total) == pytest.approx(getattr(stepped, total), rel=1e-12, abs=1e-12)
