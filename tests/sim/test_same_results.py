"""The simulator's speed work changes no result: every SimResult field, on a fixed trace and five deployments that
reach every path (tiers and their transfers, preemption, write-through, routers, decode leaps and their cuts, a
MoE under expert parallelism), equals the one recorded before it (tests/sim/data/sim_golden.npz).

Written by main's code at b2a2836 (before #29's simulator speed-ups; first at c75a4f0, rewritten when main's
step cost moved the MoE case) with `python tests/sim/test_same_results.py` run against that tree's `agentkv`;
a change meant to move results (the step-cost formulas, the scheduler) rewrites it the same way and says so.
"""

from __future__ import annotations

import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from agentkv.catalog import hardware, model
from agentkv.kvcache.sizing import codec
from agentkv.sim.simulator import SimConfig, SimResult, simulate
from agentkv.sim.stepcost import Coefficients, Deployment
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.builder import TraceBuilder
from agentkv.workload.trace import Trace

GOLDEN = Path(__file__).parent / "data" / "sim_golden.npz"
BLOCK = 16


def trace() -> Trace:
    """36 sessions of 6-10 turns over a shared 2k-token prompt (three agents), each turn adding 300-2,500 tokens."""
    rng = np.random.default_rng(29)
    b = TraceBuilder(BLOCK)
    for s in range(36):
        sid = b.add_session(f"s{s}", start=float(rng.uniform(0, 60)), scope="shared")
        ids = list(range(1_000 * (s % 3), 1_000 * (s % 3) + 128))  # the agent's system prompt
        t = 0.0
        for _ in range(int(rng.integers(6, 11))):
            new = int(rng.integers(300, 2_500)) // BLOCK
            ids += range(100_000 + 10_000 * s + len(ids), 100_000 + 10_000 * s + len(ids) + new)
            b.add_request(sid, t, len(ids) * BLOCK, int(rng.integers(20, 400)), np.array(ids),
                          think_time=float(rng.uniform(0.5, 8)), api_time=float(rng.uniform(1, 20)))
            t += 10.0
    return b.build()


def configs() -> dict[str, SimConfig]:
    small = Coefficients(activation_reserve_bytes=107.8e9)  # ~3 GB of KV: preemptions and tier traffic
    dense = Deployment(hardware("h200"), model("llama-3.1-8b"), codec("bf16"))
    tight = Deployment(hardware("h200"), model("llama-3.1-8b"), codec("bf16"), coefficients=small)
    moe = Deployment(hardware("h200"), model("qwen3-coder-30b-a3b"), codec("int4"), tp=2, ep=True)
    window = Deployment(hardware("h200"), model("gemma-3-27b"), codec("fp8"))  # sliding-window layer groups
    return {
        "two_replicas": SimConfig(dense, replicas=2, arrival=ArrivalModel("concurrency", 12)),
        "tight_tiers": SimConfig(tight, replicas=1, dram_bytes=2e9, disk_bytes=8e9, write_through=True,
                                 arrival=ArrivalModel("concurrency", 16)),
        "tight_lfu_session": SimConfig(tight, replicas=3, policy="lfu", router="session",
                                       arrival=ArrivalModel("concurrency", 24)),
        "moe_trace_arrivals": SimConfig(moe, replicas=2, arrival=ArrivalModel("trace")),
        "no_prefix_cache": SimConfig(window, replicas=2, prefix_cache=False, router="least-loaded",
                                     arrival=ArrivalModel("concurrency", 30)),
    }


def flat(res: SimResult) -> dict[str, np.ndarray]:
    """Every field but the wall time and the config, as arrays."""
    return {f.name: np.asarray(getattr(res, f.name)) for f in fields(res) if f.name not in ("wall_s", "config")}


@pytest.mark.parametrize("name", list(configs()))
def test_results_are_unchanged(name: str) -> None:
    golden = np.load(GOLDEN)
    got = flat(simulate(trace(), configs()[name]))
    for key, value in got.items():
        np.testing.assert_array_equal(value, golden[f"{name}.{key}"], err_msg=f"{name}: {key}")


def test_the_golden_exercises_every_path() -> None:
    golden = np.load(GOLDEN)
    assert golden["tight_tiers.preemptions"].sum() > 0
    assert golden["tight_tiers.transfer_s"] > 0
    assert golden["tight_tiers.cached"][:, 1:].sum() > 0  # hits served from DRAM or disk
    assert len(np.unique(golden["two_replicas.replica"])) == 2


if __name__ == "__main__":  # PYTHONPATH=<a checkout of the code to record> python tests/sim/test_same_results.py
    out = {f"{name}.{k}": v for name, cfg in configs().items() for k, v in flat(simulate(trace(), cfg)).items()}
    np.savez_compressed(GOLDEN, **out)
    print(f"wrote {GOLDEN} ({len(out)} arrays)", file=sys.stderr)
