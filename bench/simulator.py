"""Simulated requests per second: the 195 shared Claude Code sessions served on modelled deployments.

Baseline (same run): the offline replay of the same requests through the same policy core with no clock
(`cache sweep`'s loop), i.e. what timing, batching and the step-cost model add on top of cache decisions.
Run: .venv/bin/python -m bench.simulator
"""

from __future__ import annotations

import sys
import time

from agentkv.catalog import hardware, model
from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.policies import make_policy
from agentkv.kvcache.replay import replay
from agentkv.kvcache.sizing import codec, kv_bytes_per_block
from agentkv.kvcache.tiers import TierSpec
from agentkv.sim.simulator import SimConfig, simulate
from agentkv.sim.stepcost import Deployment
from agentkv.workload import load_trace
from agentkv.workload.arrivals import ArrivalModel, place, replay_order
from bench._common import TRACES, machine


def main() -> int:
    trace = load_trace(str(TRACES / "claude-code"))
    print(f"machine: {machine()}")
    print(f"{trace.n_requests:,} requests, {int(trace.input_tokens.sum()):,} input tokens; llama-3.1-8b on h200")
    for kv, replicas, conc in (("bf16", 2, 20), ("int4", 2, 20), ("int4", 8, 200)):
        d = Deployment(hardware("h200"), model("llama-3.1-8b"), codec(kv))
        arrival = ArrivalModel("concurrency", conc)
        served, arrivals = place(trace, arrival)  # as the simulator serves it (warm start: see arrivals)
        order = replay_order(arrivals)
        tier = TierSpec("gpu", d.kv_capacity_bytes, kv_bytes_per_block(d.model, d.kv_codec, trace.block_size))
        t = time.perf_counter()
        replay(served, order, arrivals, KVCache([tier], make_policy("lru")))
        base = time.perf_counter() - t
        res = simulate(trace, SimConfig(d, replicas=replicas, policy="lru", arrival=arrival))
        print(f"  {kv} KV, {replicas} replicas, {conc} sessions: {res.wall_s:5.1f} s = "
              f"{trace.n_requests / res.wall_s:6.0f} requests/s, {res.steps:,} steps "
              f"({res.wall_s / base:4.1f}x the clockless replay's {base:.1f} s); hit {100 * res.hit_rate:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
