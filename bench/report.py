"""`agentkv report` end to end on its default workload, against one simulation of that workload (baseline).

The report is ~30 simulations (capacity search, sizing and the same-fleet run of 8 levers) in 2 worker
processes, plus trace generation, provider replays and plots. The baseline, measured in the same run, is one
of those simulations (+DRAM tier, one replica, 20 concurrent sessions), so the ratio holds on a machine that
other work slows down; CPU seconds are counted for the report's whole process tree.
Run: .venv/bin/python -m bench.report [--sessions N | PATH...]
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time

from agentkv.commands.report import REPORT_SESSIONS
from agentkv.report.ladder import LADDER, DeploymentSpec, rung_config
from agentkv.sim.simulator import simulate
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.generator import GeneratorConfig, generate
from bench._common import machine


def main() -> int:
    print(f"machine: {machine()}")
    trace = generate(GeneratorConfig(sessions=REPORT_SESSIONS))
    cpu, wall = time.process_time(), time.perf_counter()
    simulate(trace, rung_config(DeploymentSpec(), LADDER[5], ArrivalModel("concurrency", 20.0), 1))
    base_cpu, base_wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"baseline, one simulation ({trace.n_requests:,} requests): {base_wall:.1f} s wall, {base_cpu:.1f} CPU-s")
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "agentkv.cli", "report", *sys.argv[1:], "--json",
                            "--out", f"{out}/report.html"], capture_output=True, text=True)
        wall = time.perf_counter() - wall
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode:
        print(r.stderr, file=sys.stderr)
        return r.returncode
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(f"agentkv report {' '.join(sys.argv[1:])}: {wall:.1f} s wall ({wall / base_wall:.1f}× the baseline), "
          f"{cpu:.1f} CPU-s ({cpu / base_cpu:.1f}× the baseline)")
    print(f"on 2 otherwise idle cores (the report's CPU over 2 workers): ≈ {cpu / 2:.0f} s at this machine's "
          f"per-simulation speed; scale by (baseline on an idle core) / {base_cpu:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
