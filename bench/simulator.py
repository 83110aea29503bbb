"""Simulated requests per second: the 195 shared Claude Code sessions served on modelled deployments, and one
capacity probe of the report.

Baseline (same run): the offline replay of the same requests through the same policy core with no clock
(`cache sweep`'s loop), i.e. what timing, batching and the step-cost model add on top of cache decisions. With
`--against COMMIT ...`, also the same simulations at each commit (checked out into a temporary git worktree) and at
this code, each in a child process, timed in CPU seconds (the figure to compare on a shared machine): the speed-up
of the code since, on the same machine in the same run. `--repeat N` runs the sides in turn N times and keeps
each case's least CPU time per side (a single run of either moves by ±15% on the shared 2-core box).
The report case is what `agentkv report` simulates ~80 times per report: its default deployment for a generated
trace (DeepSeek-V4-Flash, int4 weights, TP2 on h200: `report.models.choose_model`'s pick for it), the +DRAM-tier
rung, one replica, 20 concurrent sessions, on `REPORT_CASE_SESSIONS` generated sessions (each side generates
them with its own code: compare requests per CPU-second where the trace differs). The disaggregated probe is the
same on 1 prefill + 3 decode replicas (`report.ladder.serve` with a prefill share: `sim/pd_simulation.py`'s two
rounds of both pools); `--against` needs commits that have it (main from 22a9b2e on).
Run: .venv/bin/python -m bench.simulator [--against COMMIT ... [--repeat N]]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from agentkv.catalog import hardware, model
from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.policies import make_policy
from agentkv.kvcache.replay import replay
from agentkv.kvcache.sizing import codec, kv_bytes_per_block
from agentkv.kvcache.tiers import TierSpec
from agentkv.report.ladder import LADDER, DeploymentSpec, rung_config, serve
from agentkv.sim.simulator import SimConfig, SimResult, simulate
from agentkv.sim.stepcost import Deployment
from agentkv.workload import load_trace
from agentkv.workload.arrivals import ArrivalModel, place, replay_order
from agentkv.workload.generator import GeneratorConfig, generate
from agentkv.workload.trace import Trace
from bench._common import TRACES, machine

CASES = (("bf16", 2, 20), ("int4", 2, 20), ("int4", 8, 200))  # KV codec, replicas, concurrent sessions
REPORT_CASE_SESSIONS = 100
REPORT_SPEC = DeploymentSpec(model="deepseek-v4-flash", tp=2, weight_dtype="int4")
PD_SHARE, PD_REPLICAS = 0.3, 4  # the disaggregated probe: the report case on 1 prefill + 3 decode replicas
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
    print(json.dumps({"cpu": time.process_time() - cpu, "hit": res.hit_rate, "requests": trace.n_requests}),
          flush=True)
from agentkv.report.ladder import LADDER, DeploymentSpec, rung_config
from agentkv.workload.generator import GeneratorConfig, generate
trace = generate(GeneratorConfig(sessions=int(sys.argv[3])))
spec = DeploymentSpec(model="deepseek-v4-flash", tp=2, weight_dtype="int4")
cpu = time.process_time()
res = simulate(trace, rung_config(spec, LADDER[5], ArrivalModel("concurrency", 20.0), 1))
print(json.dumps({"cpu": time.process_time() - cpu, "hit": res.hit_rate, "requests": trace.n_requests}), flush=True)
from dataclasses import replace
from agentkv.report.ladder import serve  # a commit before 22a9b2e stops here: the cases before still count
share, replicas = json.loads(sys.argv[4])
cpu = time.process_time()
res = serve(trace, replace(spec, prefill_share=share), LADDER[5], ArrivalModel("concurrency", 20.0), replicas)
print(json.dumps({"cpu": time.process_time() - cpu, "hit": res.hit_rate, "requests": trace.n_requests}), flush=True)
"""


def simulated(trace: Trace, kv: str, replicas: int, conc: int) -> SimResult:
    d = Deployment(hardware("h200"), model("llama-3.1-8b"), codec(kv))
    return simulate(trace, SimConfig(d, replicas=replicas, policy="lru", arrival=ArrivalModel("concurrency", conc)))


def report_case() -> tuple[Trace, SimConfig]:
    """The report's capacity probe (see the module docstring)."""
    trace = generate(GeneratorConfig(sessions=REPORT_CASE_SESSIONS))
    return trace, rung_config(REPORT_SPEC, LADDER[5], ArrivalModel("concurrency", 20.0), 1)


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


def cpu_seconds(root: Path, trace_path: str, say_stop: bool = True) -> list[dict]:
    """CPU seconds and hit rate of each case simulated by the code under `root`, in a child process (`say_stop`:
    print why it stopped before the last case, if it did)."""
    p = subprocess.run([sys.executable, "-c", _SIMULATE, trace_path, json.dumps(CASES), str(REPORT_CASE_SESSIONS),
                        json.dumps([PD_SHARE, PD_REPLICAS])],
                       capture_output=True,
                       text=True, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, cwd=root)
    runs = [json.loads(line) for line in p.stdout.splitlines()]
    if p.returncode and say_stop:
        print(f"  simulations at {root} stopped after {len(runs)} cases: {p.stderr.strip().splitlines()[-1]}")
    return runs


def best(runs: list[list[dict]]) -> list[dict]:
    """Each case's run with the least CPU time among rounds (a round that stopped early has fewer cases)."""
    return [min((r[k] for r in runs if k < len(r)), key=lambda run: run["cpu"]) for k in range(max(map(len, runs)))]


def against(commits: list[str], trace_path: str, repeat: int = 1) -> None:
    """Print each case's CPU seconds here and at each of `commits` (each checked out into a temporary git
    worktree), measured in the same run: `repeat` rounds of every side in turn, the least of each case kept."""
    with tempfile.TemporaryDirectory() as tmp:
        trees = {commit: Path(tmp) / f"at-{commit}" for commit in commits}
        for commit, tree in trees.items():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), commit], check=True,
                           capture_output=True)
        try:
            rounds = [{side: cpu_seconds(tree, trace_path, say_stop=i == 0)  # each round runs the same code
                       for side, tree in [*trees.items(), ("here", ROOT)]} for i in range(repeat)]
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)
    before = {commit: best([r[commit] for r in rounds]) for commit in commits}
    now = best([r["here"] for r in rounds])
    names = [f"{kv} KV, {replicas} replicas, {conc} sessions" for kv, replicas, conc in CASES]
    for k, (name, new) in enumerate(zip([*names, "report probe", "disaggregated probe"], now, strict=True)):
        rate = new["requests"] / new["cpu"]
        print(f"  {name}: {new['cpu']:.2f} CPU-s here ({rate:,.0f} requests/CPU-s, hit {100 * new['hit']:.1f}%)")
        for commit, runs in before.items():
            if k >= len(runs):
                print(f"    not at {commit} (its code cannot run this case)")
                continue
            old = runs[k]
            was = old["requests"] / old["cpu"]
            print(f"    {old['cpu']:.2f} at {commit} ({was:,.0f}) -> {rate / was:.2f}x; hit {100 * old['hit']:.1f}%")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--against", metavar="COMMIT", nargs="+", default=[],
                    help="also simulate at these commits (each in its own worktree) and print the speed-ups")
    ap.add_argument("--repeat", type=int, default=1, metavar="N",
                    help="with --against: run every side N times in turn and keep each case's least CPU time")
    args = ap.parse_args()
    if args.repeat < 1:
        ap.error(f"--repeat must be at least 1 (got {args.repeat})")
    trace = load_trace(str(TRACES / "claude-code"))
    print(f"machine: {machine()}")
    print(f"{trace.n_requests:,} requests, {int(trace.input_tokens.sum()):,} input tokens; llama-3.1-8b on h200")
    for kv, replicas, conc in CASES:
        base = clockless_replay_s(trace, kv, conc)
        res = simulated(trace, kv, replicas, conc)
        print(f"  {kv} KV, {replicas} replicas, {conc} sessions: {res.wall_s:5.1f} s = "
              f"{trace.n_requests / res.wall_s:6.0f} requests/s, {res.steps:,} steps "
              f"({res.wall_s / base:4.1f}x the clockless replay's {base:.1f} s); hit {100 * res.hit_rate:.1f}%")
    trace, cfg = report_case()
    cpu = time.process_time()
    res = simulate(trace, cfg)
    cpu = time.process_time() - cpu
    print(f"  report probe ({cfg.deployment.model.name}, {cfg.deployment.mode}, +DRAM tier, 1 replica, 20 sessions of "
          f"{REPORT_CASE_SESSIONS} generated, {trace.n_requests:,} requests): {cpu:.2f} CPU-s = "
          f"{trace.n_requests / cpu:,.0f} requests/CPU-s, {res.steps:,} steps; hit {100 * res.hit_rate:.1f}%")
    spec = replace(REPORT_SPEC, prefill_share=PD_SHARE)
    cpu = time.process_time()
    res = serve(trace, spec, LADDER[5], ArrivalModel("concurrency", 20.0), PD_REPLICAS)
    cpu = time.process_time() - cpu
    print(f"  disaggregated probe (the same on {spec.fleet_words(PD_REPLICAS)}): {cpu:.2f} CPU-s = "
          f"{trace.n_requests / cpu:,.0f} requests/CPU-s, {res.steps:,} steps; hit {100 * res.hit_rate:.1f}%")
    if args.against:
        against(args.against, str(TRACES / "claude-code"), args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
