"""Whole trace or a sample: the report simulates the whole trace whenever its projected time fits the budget.

A sample of sessions misprices every lever by −34% to +70% on $/Mtok, with no fixed sign (docs/BENCHMARKS.md,
`bench.sample_error`, measured 2026 on the Claude Code traces and generated ones), so a sample is the fallback
for traces too large for the budget, not the default. A whole-trace report probes capacity and chooses each
lever's mode on the SAMPLE_SESSIONS sample (`report/simulated.py`) and sizes, runs the same fleet and prices on
the whole trace, so its cost is a fixed part (the sample's simulations) plus a part in proportion to the trace's
requests. The projection times one simulation of a small sample on this machine (CPU seconds per request) and
scales each part by the simulations it costs, fitted to measured reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from agentkv.report.capacity import SAMPLE_SESSIONS, sample_sessions
from agentkv.report.ladder import LADDER, DeploymentSpec, rung_config
from agentkv.sim.simulator import simulate
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.trace import Trace

BUDGET_S = 240.0  # default --budget: a report that runs in a few minutes
# A whole-trace report's time in units of the probe's CPU per request, per request of the capacity sample and per
# request of the whole trace, fitted to the wall time of measured reports on two workers: `python -m
# bench.report_scale --sessions 1400 13250` (docs/BENCHMARKS.md, session 15, 2026-12-06, this sandbox idle) took
# 199 s at 1,400 sessions (45,715 requests, a 4,310-request sample) and 1,372 s at 13,250 (449,403, a 3,819-request
# sample), whose jobs' CPU alone is 178 and 24, and 141 and 21 probe-requests per request: the driver's own work
# and a tail with one worker idle make up the rest. 220 and 25 project 199 s and 1,372 s for them (session 14's 160
# and 25, fitted when the probe's simulation was slower against the rest of a report, now say 174 s and 1,346 s).
# The sample's part is its ~90 capacity probes, ~24 sizings and the remedies; the whole trace's, ~2 runs per lever
# and the same fleet's.
SAMPLE_IN_SIMULATIONS = 220
WHOLE_IN_SIMULATIONS = 25
PROBE_RUNG = LADDER[5]  # the rung the probe runs (+DRAM tier: the one bench.report times)
PROBE_SESSIONS = 12  # top-level sessions the speed probe simulates
SAMPLE_ERROR = "a sample's $/Mtok was measured −34% to +70% off the whole trace's, with no fixed sign"


@dataclass(slots=True, frozen=True)
class Scope:
    """What the report simulates: `sample_size` top-level sessions, 0 for the whole trace."""

    sample_size: int
    projected_s: float  # the whole trace's report, projected (wall seconds on the report's workers)
    budget_s: float
    probe_s_per_request: float = 0.0  # the speed probe's CPU seconds per simulated request, on this machine now

    def describe(self) -> str:
        if not self.projected_s:
            return f"simulating the whole trace (no more than {SAMPLE_SESSIONS} top-level sessions)"
        if not self.sample_size:
            return (f"simulating the whole trace: projected {self.projected_s:.0f} s, within the "
                    f"{self.budget_s:.0f} s --budget")
        return (f"simulating a sample of {self.sample_size} sessions: the whole trace is projected at "
                f"{self.projected_s:.0f} s, over the {self.budget_s:.0f} s --budget ({SAMPLE_ERROR}; raise "
                f"--budget, pass --sample-sessions 0, or run with --ray)")


def choose_scope(trace: Trace, spec: DeploymentSpec, arrival: ArrivalModel, budget_s: float, workers: int) -> Scope:
    """The whole trace if its projected report fits `budget_s`, else the default sample."""
    top = int((trace.session_parent < 0).sum())
    if top <= SAMPLE_SESSIONS:
        return Scope(0, 0.0, budget_s)  # the sample would be the whole trace anyway
    probe = sample_sessions(trace, PROBE_SESSIONS)
    cpu = time.process_time()
    simulate(probe, rung_config(spec, PROBE_RUNG, arrival, 1))
    per_request = (time.process_time() - cpu) / max(probe.n_requests, 1)
    sample = sample_sessions(trace, SAMPLE_SESSIONS).n_requests
    cpu_s = per_request * (SAMPLE_IN_SIMULATIONS * sample + WHOLE_IN_SIMULATIONS * trace.n_requests)
    projected = cpu_s / max(workers, 1)
    return Scope(0 if projected <= budget_s else SAMPLE_SESSIONS, projected, budget_s, per_request)
