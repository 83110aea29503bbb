"""Simulated requests per second: the 195 shared Claude Code sessions served on modelled deployments.

Baseline (same run): the offline replay of the same requests through the same policy core with no clock
(`cache sweep`'s loop), i.e. what timing, batching and the step-cost model add on top of cache decisions.
Run: .venv/bin/python -m bench.simulator
"""

from __future__ import annotations

import sys
import time

import numpy as np

from agentkv.catalog import hardware, model
from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.policies import make_policy
from agentkv.kvcache.replay import replay
from agentkv.kvcache.sizing import codec, kv_bytes_per_block
from agentkv.kvcache.tiers import TierSpec
from agentkv.sim.simulator import SimConfig, SimResult, simulate
from agentkv.sim.stepcost import Deployment
from agentkv.workload import load_trace
from agentkv.workload.arrivals import ArrivalModel, place, replay_order
from agentkv.workload.trace import Trace
from bench._common import TRACES, machine

CASES = (("bf16", 2, 20), ("int4", 2, 20), ("int4", 8, 200))  # KV codec, replicas, concurrent sessions


def simulated(trace: Trace, kv: str, replicas: int, conc: int) -> SimResult:
    d = Deployment(hardware("h200"), model("llama-3.1-8b"), codec(kv))
    return simulate(trace, SimConfig(d, replicas=replicas, policy="lru", arrival=ArrivalModel("concurrency", conc)))


def clockless_replay_s(trace: Trace, kv: str, conc: int) -> float:
    """Wall seconds of the same requests through the same policy core, as the simulator places them."""
    d = Deployment(hardware("h200"), model("llama-3.1-8b"), codec(kv))
    served, arrivals = place(trace, ArrivalModel("concurrency", conc))  # warm start: see arrivals
    tier = TierSpec("gpu", d.kv_capacity_bytes, kv_bytes_per_block(d.model, d.kv_codec, trace.block_size))
    t = time.perf_counter()
    replay(served, replay_order(arrivals), arrivals, KVCache([tier], make_policy("lru")))
    return time.perf_counter() - t


def markdown() -> str:
    """docs/BENCHMARKS.md's table of what each case simulates (no timings: `python -m bench.docs`)."""
    trace = load_trace(str(TRACES / "claude-code"))
    lines = ["| configuration | requests | steps | steps per request | hit | TTFT p50 / p90 (modelled) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for kv, replicas, conc in CASES:
        res = simulated(trace, kv, replicas, conc)
        p50, p90 = np.percentile(res.ttft, [50, 90])
        lines.append(f"| {kv} KV, {replicas} replicas, {conc} sessions | {trace.n_requests:,} | {res.steps:,} | "
                     f"{res.steps / trace.n_requests:,.0f} | {100 * res.hit_rate:.1f}% | {p50:.2f} s / {p90:.2f} s |")
    return "\n".join(lines)


def main() -> int:
    trace = load_trace(str(TRACES / "claude-code"))
    print(f"machine: {machine()}")
    print(f"{trace.n_requests:,} requests, {int(trace.input_tokens.sum()):,} input tokens; llama-3.1-8b on h200")
    for kv, replicas, conc in CASES:
        base = clockless_replay_s(trace, kv, conc)
        res = simulated(trace, kv, replicas, conc)
        print(f"  {kv} KV, {replicas} replicas, {conc} sessions: {res.wall_s:5.1f} s = "
              f"{trace.n_requests / res.wall_s:6.0f} requests/s, {res.steps:,} steps "
              f"({res.wall_s / base:4.1f}x the clockless replay's {base:.1f} s); hit {100 * res.hit_rate:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
