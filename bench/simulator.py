"""Simulated requests per second: the 195 shared Claude Code sessions served on modelled deployments.

Baselines (same run): the offline replay of the same requests through the same policy core with no clock
(`cache sweep`'s loop), i.e. what timing, batching and the step-cost model add on top of cache decisions; and,
with `--against COMMIT`, the same simulations at that commit (checked out into a temporary git worktree and run
in a child process, as this code is): the speed-up of the code since, on the same machine in the same run. CPU
seconds are the figure to compare on a shared machine (wall time includes waiting for a core).
Run: .venv/bin/python -m bench.simulator [--against COMMIT]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agentkv.catalog import hardware, model
from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.policies import make_policy
from agentkv.kvcache.replay import replay
from agentkv.kvcache.sizing import codec, kv_bytes_per_block
from agentkv.kvcache.tiers import TierSpec
from agentkv.sim.stepcost import Deployment
from agentkv.workload import load_trace
from agentkv.workload.arrivals import ArrivalModel, place, replay_order
from bench._common import TRACES, machine

CASES = (("bf16", 2, 20), ("int4", 2, 20), ("int4", 8, 200))  # KV codec, replicas, concurrent sessions
ROOT = Path(__file__).resolve().parents[1]

# One simulation per case, through APIs every commit since the simulator has kept (so a baseline commit runs it).
_SIMULATE = """
import json, sys, time
from agentkv.catalog import hardware, model
from agentkv.kvcache.sizing import codec
from agentkv.sim.simulator import SimConfig, simulate
from agentkv.sim.stepcost import Deployment
from agentkv.workload import load_trace
from agentkv.workload.arrivals import ArrivalModel
trace = load_trace(sys.argv[1])
for kv, replicas, conc in json.loads(sys.argv[2]):
    d = Deployment(hardware("h200"), model("llama-3.1-8b"), codec(kv))
    cpu = time.process_time()
    res = simulate(trace, SimConfig(d, replicas=replicas, policy="lru", arrival=ArrivalModel("concurrency", conc)))
    print(json.dumps({"cpu": time.process_time() - cpu, "wall": res.wall_s, "steps": res.steps,
                      "hit": res.hit_rate, "requests": trace.n_requests}), flush=True)
"""


def simulations(root: Path, trace_path: str) -> list[dict]:
    """The cases simulated by the code under `root`, in a child process."""
    p = subprocess.run([sys.executable, "-c", _SIMULATE, trace_path, json.dumps(CASES)], capture_output=True,
                       text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, cwd=root)
    if p.returncode:
        sys.exit(f"simulations at {root}: {p.stderr.strip().splitlines()[-1]}")
    return [json.loads(line) for line in p.stdout.splitlines()]


def at_commit(commit: str, trace_path: str) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "baseline"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True,
                       capture_output=True)
        try:
            return simulations(tree, trace_path)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)


def clockless(trace, kv: str, conc: int) -> float:
    """CPU seconds the offline replay of the same requests takes (no clock, no batching)."""
    d = Deployment(hardware("h200"), model("llama-3.1-8b"), codec(kv))
    arrival = ArrivalModel("concurrency", conc)
    served, arrivals = place(trace, arrival)  # as the simulator serves it (warm start: see arrivals)
    tier = TierSpec("gpu", d.kv_capacity_bytes, kv_bytes_per_block(d.model, d.kv_codec, trace.block_size))
    t = time.process_time()
    replay(served, replay_order(arrivals), arrivals, KVCache([tier], make_policy("lru")))
    return time.process_time() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", metavar="COMMIT", help="also simulate at this commit and print the speed-up")
    args = ap.parse_args()
    path = str(TRACES / "claude-code")
    trace = load_trace(path)
    print(f"machine: {machine()}")
    print(f"{trace.n_requests:,} requests, {int(trace.input_tokens.sum()):,} input tokens; llama-3.1-8b on h200")
    now = simulations(ROOT, path)
    before = at_commit(args.against, path) if args.against else [None] * len(CASES)
    for (kv, replicas, conc), res, old in zip(CASES, now, before, strict=True):
        base = clockless(trace, kv, conc)
        line = (f"  {kv} KV, {replicas} replicas, {conc} sessions: {res['cpu']:5.1f} CPU-s = "
                f"{res['requests'] / res['cpu']:6.0f} requests/CPU-s, {res['steps']:,} steps "
                f"({res['cpu'] / base:4.1f}x the clockless replay's {base:.1f} s); hit {100 * res['hit']:.1f}%")
        if old:
            line += (f"; at {args.against}: {old['cpu']:.1f} CPU-s, hit {100 * old['hit']:.1f}% -> "
                     f"{old['cpu'] / res['cpu']:.2f}x")
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
