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
from agentkv.workload.builder import TraceBuilder
from agentkv.workload.trace import Trace

BLOCK = 16


def long_prompts() -> Trace:
    """12 sessions of 3-5 turns whose prompts run to 9k-40k tokens: several 2,048-token chunks each."""
    rng = np.random.default_rng(7)
    b = TraceBuilder(BLOCK)
    for s in range(12):
        sid = b.add_session(f"s{s}", start=float(rng.uniform(0, 20)), scope="shared")
        ids = list(range(1_000 * (s % 2), 1_000 * (s % 2) + 64))
        for turn in range(int(rng.integers(3, 6))):
            new = int(rng.integers(9_000, 40_000)) // BLOCK
            ids += range(100_000 + 10_000 * s + len(ids), 100_000 + 10_000 * s + len(ids) + new)
            b.add_request(sid, 5.0 * turn, len(ids) * BLOCK, int(rng.integers(20, 300)), np.array(ids),
                          think_time=float(rng.uniform(0.5, 4)), api_time=5.0)
    return b.build()


CONFIGS = {
    "no_prefix_cache": dict(prefix_cache=False, router="least-loaded"),
    "tiers": dict(dram_bytes=2e9, disk_bytes=8e9),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_leaping_a_prompts_chunks_changes_nothing(name, monkeypatch):
    d = Deployment(hardware("h200"), model("llama-3.1-8b"), codec("bf16"))
    cfg = SimConfig(d, replicas=2, max_batched_tokens=2048, arrival=ArrivalModel("concurrency", 6), **CONFIGS[name])
    trace = long_prompts()
    leaps = []
    real = simulator.prefill_leap

    def counted(*args):
        leap = real(*args)
        leaps.extend([leap] if leap is not None else [])
        return leap

    monkeypatch.setattr(simulator, "prefill_leap", counted)
    leapt = simulate(trace, cfg)
    assert sum(len(leap.chunks) for leap in leaps) > trace.n_requests  # most of the prompts' steps
    monkeypatch.setattr(simulator, "prefill_leap", lambda *args: None)
    stepped = simulate(trace, cfg)
    for field in ("arrival", "first_token", "finish", "cached", "replica", "preemptions", "busy_s"):
        assert np.array_equal(getattr(leapt, field), getattr(stepped, field), equal_nan=True), field
    assert leapt.steps == stepped.steps and leapt.prefill_tokens == stepped.prefill_tokens
    for total in ("prefill_s", "decode_s", "cached_s", "transfer_s"):
        assert getattr(leapt, total) == pytest.approx(getattr(stepped, total), rel=1e-12, abs=1e-12)
