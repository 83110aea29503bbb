"""Sized to the SLO: the fewest replicas that meet every part of it (`slo.meets_slo`) under the offered load.

Each candidate size is a full simulation. The search starts from the size the lever's capacity per replica
implies (offered sessions / sessions one replica serves), walks down or up from there in growing steps and
bisects the last gap, so a good guess costs two runs. A lever without a prefix cache whose SLO-percentile
prompt alone takes longer than the SLO to prefill is not simulated: no size helps, so it gets no size and no
cost, only the reason. A trace larger than the capacity sample is sized on the sample at the same load (see
`assemble.build_report`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from agentkv.cost.selfhosted import SelfHostedCost, self_hosted_cost
from agentkv.report.capacity import Capacity, floor_miss, slo_bound
from agentkv.report.ladder import DeploymentSpec, Rung, serve, slo_ttft
from agentkv.report.slo import meets_slo, slo_misses
from agentkv.sim.simulator import SimResult
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.trace import Trace


@dataclass(slots=True)
class Sized:
    replicas: int | None  # fewest replicas meeting the SLO; None: no size found that does
    ttft_slo_s: float  # TTFT at the SLO's percentile at that size (the best tried, or the floor, where missed)
    cost: SelfHostedCost | None  # only where the SLO is met
    result: SimResult | None = None
    reason: str = ""  # why the SLO is missed
    binding: list[str] = field(default_factory=list)  # what one replica fewer misses: the bounds that set the size
    busy_below: float = float("nan")  # the share of GPU time busy at one replica fewer, where that was run
    # TPOT at the SLO's percentile one replica fewer, less the share of busy time its prefill took: about what
    # decode steps with no prefill in them would give there (ms; NaN where not run)
    decode_tpot_below_ms: float = float("nan")


def size_to_slo(trace: Trace, spec: DeploymentSpec, rung: Rung, arrival: ArrivalModel, capacity: Capacity,
                offered_sessions: float, usd_per_gpu_hour: float, runs: dict[int, SimResult],
                max_runs: int = 8, start: int | None = None) -> Sized:
    """`runs` (replicas → result at the offered arrivals) is read and filled, so other views can reuse them.
    `start`: the first size tried (default: what the capacity per replica implies)."""
    if capacity.sessions_per_replica <= 0 and not rung.prefix_cache and not capacity.undefined:
        return Sized(None, capacity.ttft_slo_s, None, reason=capacity.reason)
    if (miss := floor_miss(trace, spec, rung)) is not None:  # a remedy's own chunk budget or width may set one
        return Sized(None, miss.ttft_slo_s, None, reason=miss.reason)
    budget = len(runs) + max_runs

    def meets(r: int) -> bool:
        if r not in runs:
            runs[r] = serve(trace, spec, rung, arrival, r)
        return meets_slo(runs[r], spec)

    # a replica that misses the SLO even lightly loaded may still meet it as part of a fleet: more replicas
    # also mean more cache, so that search starts from one replica per five sessions
    per = capacity.sessions_per_replica or 5.0
    # most replicas known to miss (0: none); a disaggregated fleet has two at least, one a pool. From a `start`
    # (a sample's answer) the walk takes two runs already: the bound, a second over the trace, would not save one
    lo = max(max((r for r in runs if not meets(r)), default=1 if spec.prefill_share else 0),
             0 if start else known_misses(trace, spec, rung, arrival))
    hi, step = None, 1  # fewest replicas known to meet
    guess = min(max(start or math.ceil(offered_sessions / per), lo + 1), spec.max_replicas)
    if meets(guess):
        hi = guess
        while lo == 0 and hi > 1 and len(runs) < budget:  # walk down until a miss bounds it, then bisect
            r = max(hi - step, 1)
            if not meets(r):
                lo = r
                break
            hi, step = r, 2 * step
    else:
        lo = guess
        while hi is None and lo < spec.max_replicas and len(runs) < budget:
            r = min(lo + step, spec.max_replicas)
            lo, hi, step = (lo, r, step) if meets(r) else (r, None, 2 * step)
    while hi is not None and hi - lo > 1 and len(runs) < budget:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if meets(mid) else (mid, hi)
    if hi is None:
        best = min(runs, key=lambda r: (len(slo_misses(runs[r], spec)), slo_ttft(runs[r], spec)))
        return Sized(None, slo_ttft(runs[best], spec), None, runs[best],
                     reason=f"no fleet up to {max(runs)} replicas meets it (at {best}: "
                            + "; ".join(slo_misses(runs[best], spec)) + ")")
    below = runs.get(hi - 1)
    sized = Sized(hi, slo_ttft(runs[hi], spec), self_hosted_cost(runs[hi], usd_per_gpu_hour), runs[hi],
                  binding=slo_misses(below, spec) if below else [])
    if below is not None and len(below.tpot):
        sized.busy_below = self_hosted_cost(below, usd_per_gpu_hour).utilisation
        prefill = below.prefill_s / max(float(below.busy_s.sum()), 1e-9)
        sized.decode_tpot_below_ms = 1e3 * float(np.percentile(below.tpot, spec.slo_quantile)) * (1 - prefill)
    return sized



def known_misses(trace: Trace, spec: DeploymentSpec, rung: Rung, arrival: ArrivalModel) -> int:
    """Most replicas that miss the SLO without a simulation (0: none known): below concurrency / `capacity.slo_bound`
    per replica, the fleet's GPU time is too short for the trace's least work (each token is computed on some
    replica at least once) at the pace the SLO allows. Colocated fleets at a concurrency only: what the bound is
    stated for."""
    if spec.prefill_share or arrival.mode != "concurrency":
        return 0
    bound = slo_bound(trace, spec, rung)
    return max(math.ceil(arrival.value / bound) - 1, 0) if bound > 0 else 0


def resize(whole: Trace, spec: DeploymentSpec, rung: Rung, arrival: ArrivalModel, capacity: Capacity,
           on_sample: Sized, offered_sessions: float, usd_per_gpu_hour: float,
           runs: dict[int, SimResult] | None = None) -> tuple[Sized, dict[int, SimResult]]:
    """A lever in the mode chosen on the capacity sample, sized on the whole trace from the sample's answer: its
    size and one fewer where the sample was right. `runs`: the whole-trace runs made so far, by replicas. Returns
    the size and every run, by replicas, for the same-fleet view."""
    runs = {} if runs is None else runs  # a floor miss gets no run: `size_to_slo` knows it without one
    return size_to_slo(whole, spec, rung, arrival, capacity, offered_sessions, usd_per_gpu_hour, runs,
                       start=on_sample.replicas), runs
