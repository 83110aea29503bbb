"""How far the report's 120-session sample is from the whole trace: per lever, the GPUs the SLO needs, the
$/Mtok at that size and the TTFT at the SLO's percentile there, from the sample and from the whole trace (both
run as Ray tasks on a local cluster), and the sample's error against the whole trace.
Run: .venv/bin/python -m bench.sample_error [--sessions N ...] [--sample K] [PATH ...]  (default: claude-code
and 240 generated sessions, K = 120)
"""

from __future__ import annotations

import argparse
import sys
import time

from agentkv.catalog import prices
from agentkv.report.assemble import Report, build_report
from agentkv.report.capacity import SAMPLE_SESSIONS
from agentkv.report.ladder import DeploymentSpec
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.generator import GeneratorConfig, generate
from agentkv.workload.load import load_trace
from bench._common import TRACES, machine


def _figures(rep: Report) -> dict[str, tuple]:
    out = {}
    for o in rep.outcomes:
        s = o.sized
        out[o.rung.name] = (s.replicas * rep.spec.tp if s.replicas else None,
                            s.cost.usd_per_mtok_blended if s.cost else None, s.ttft_slo_s)
    return out


def relative_error(sample, full) -> str:
    """The sample's figure against the whole trace's, in percent (— where neither has one)."""
    if sample is None or full is None:
        return "—" if sample == full else "n/a"
    return f"{100 * (sample - full) / full:+.0f}%" if full else "—"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="*")
    ap.add_argument("--sessions", type=int, action="append", help="generated traces of this many sessions")
    ap.add_argument("--concurrency", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sample", type=int, default=SAMPLE_SESSIONS, help="sample size (the report's: 120)")
    a = ap.parse_args()
    traces = [load_trace(p) for p in a.paths] if a.paths or a.sessions else [load_trace(str(TRACES / "claude-code"))]
    traces += [generate(GeneratorConfig(sessions=n)) for n in (a.sessions or ([] if a.paths else [240]))]
    print(f"machine: {machine()}; arrivals: {a.concurrency:g} concurrent sessions; Ray local, {a.workers} CPUs")
    arrival = ArrivalModel("concurrency", a.concurrency)
    for trace in traces:
        top = int((trace.session_parent < 0).sum())
        runs = {}
        for label, k in (("sample", a.sample), ("whole", trace.n_sessions)):
            t = time.perf_counter()
            rep = build_report(trace, DeploymentSpec(), arrival, prices(), workers=a.workers, sample_size=k, ray="local")
            runs[label] = _figures(rep)
            print(f"{trace.source}: {top} sessions, {trace.n_requests:,} requests; {label}: {rep.measured_on}; "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
        print("| lever | GPUs sample / whole | $/Mtok sample / whole (error) | p90 TTFT s sample / whole (error) |")
        print("| --- | --- | --- | --- |")
        for lever, (g, usd, ttft) in runs["sample"].items():
            g2, usd2, ttft2 = runs["whole"][lever]
            fmt = lambda x, f: "—" if x is None else format(x, f)  # noqa: E731
            print(f"| {lever} | {fmt(g, 'd')} / {fmt(g2, 'd')} | {fmt(usd, '.3f')} / {fmt(usd2, '.3f')} "
                  f"({relative_error(usd, usd2)}) | {ttft:.2f} / {ttft2:.2f} ({relative_error(ttft, ttft2)}) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
