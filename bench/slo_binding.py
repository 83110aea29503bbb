"""What an output-speed bound does to the fleet: the report's all-levers rung sized at a high load with the
default SLO (baseline) and with a TPOT bound added, on the default model the report picks for the workload.

This is the report's own sizing (`assemble.measure_rung`: capacity on one replica, then the fewest replicas at
the offered load), run for one rung only, so a load of hundreds of sessions fits in a shared box's memory (the
no-prefix-cache rungs of the full report run dozens of replicas each). The ratio is GPUs with the bound over GPUs
without it.
Run: .venv/bin/python -m bench.slo_binding [--sessions 400] [--sample 40] [--bound slo_tpot_ms=20]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from agentkv.catalog import model
from agentkv.report.capacity import sample_sessions
from agentkv.report.ladder import LADDER, DeploymentSpec
from agentkv.report.models import choose_model
from agentkv.report.rungs import measure_rung, remedy
from agentkv.report.slo import slo_achieved
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.generator import GeneratorConfig, generate
from agentkv.workload.window import fit_window
from bench._common import machine


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=400, help="generated sessions, offered as that many at once")
    ap.add_argument("--sample", type=int, default=40, help="sessions simulated (the report's --sample-sessions)")
    ap.add_argument("--bound", default="slo_tpot_ms=20", help="the SLO key=value added to the default")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    trace = generate(GeneratorConfig(sessions=args.sessions))
    spec, why = choose_model(trace, DeploymentSpec(), set())
    print(f"model: {why}")
    fitted = fit_window(trace, model(spec.model).context, "compact")[0]
    sample = sample_sessions(fitted, args.sample)
    arrival = ArrivalModel("concurrency", float(args.sessions))
    key, value = args.bound.split("=")
    gpus = []
    for label, s in (("default SLO", spec), (f"+ {args.bound}", replace(spec, **{key: float(value)}))):
        wall = time.perf_counter()
        tried = measure_rung(sample, sample, s, LADDER[-1], arrival, float(args.sessions), 3.49, None)
        out = remedy(sample, tried, arrival, float(args.sessions), 3.49, None)[0]  # chunk budgets, disaggregation
        sized = out.sized
        got = slo_achieved(sized.result, s) if sized.result is not None else sized.reason
        n = sized.cost.gpus if sized.cost else None
        gpus.append(n)
        print(f"{label} ({s.slo}): {n} GPUs ({out.spec.fleet_words(sized.replicas or 1)}) at {args.sessions} "
              f"sessions; {got}; capacity "
              f"{out.capacity.sessions_per_replica:.3g} sessions per replica"
              + (f"; one replica fewer misses {'; '.join(sized.binding)}" if sized.binding else "")
              + f" [{time.perf_counter() - wall:.0f} s]")
    if all(gpus):
        print(f"ratio: {gpus[1] / gpus[0]:.2f}x the GPUs with {args.bound}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
