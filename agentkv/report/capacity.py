"""Capacity per GPU: the most concurrent agent sessions one replica serves within the SLO, per lever.

Whole replicas are coarse (at 20 sessions several levers all need one GPU), so each lever is also measured on
one replica under rising load: Poisson session starts at a target concurrency (as `--concurrency` sets it:
start rate × mean recorded session length), bracketed by doubling and then narrowed geometrically to within
RESOLUTION. Large traces are measured on an evenly spaced sample of sessions; a load above the sample's session
count replays copies of its sessions (fresh ids for their private blocks), so the search is not capped by it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from agentkv.report.ladder import DeploymentSpec, Rung, prefill_floor, rung_config, slo_ttft
from agentkv.report.slo import meets_slo, slo_misses
from agentkv.sim.simulator import SimResult, simulate
from agentkv.workload.arrivals import ArrivalModel, root_sessions, session_spans
from agentkv.workload.trace import Trace

SAMPLE_SESSIONS = 120  # top-level sessions the search simulates at most
MAX_SESSIONS = 4096.0  # the most concurrent sessions one replica is probed at: beyond it, a lower bound
RESOLUTION = 1.5  # stop when the highest load met and the lowest missed are this close: one geometric midpoint
# inside a doubling bracket (√2 apart), which keeps the default report within a minute on 2 cores


@dataclass(slots=True)
class Capacity:
    sessions_per_replica: float  # the highest concurrency that met the SLO; 0: none did
    ttft_slo_s: float  # TTFT at the SLO's percentile there (at the lightest load tried, or the floor, where none did)
    at_limit: bool = False  # met at MAX_SESSIONS, the most load probed: a lower bound
    reason: str = ""  # why none met it
    probes: list[tuple[float, float]] = field(default_factory=list)  # (target concurrency, TTFT at the SLO's q)
    tokens_per_session_s: float = 0.0  # prompt and output tokens an open session sends per second, at capacity
    undefined: bool = False  # the trace's sessions have no length, so a concurrency cannot place them: not probed


def session_capacity(trace: Trace, spec: DeploymentSpec, rung: Rung, seed: int, start: float = 20.0,
                     max_runs: int = 5, runs: dict[float, SimResult] | None = None,
                     max_sessions: float = MAX_SESSIONS) -> Capacity:
    """Probes halve once below `start`, then drop to one session; `runs` (concurrency → result) is filled. The
    load is not capped by the trace's session count: past it, placement wraps each session round the shorter
    window, and every later lap is another user's copy of it with fresh ids for its private blocks (see
    `workload.arrivals.place`)."""
    floor = prefill_floor(trace, spec, rung)
    if floor > spec.slo_ttft_s:
        return Capacity(0.0, floor, reason=f"the p{spec.slo_quantile:g} prompt alone takes {floor:.0f} s to "
                                           "prefill on an idle GPU")
    top = root_sessions(trace) == np.arange(trace.n_sessions)
    if not top.any() or float(session_spans(trace)[top].mean()) <= 0:
        return Capacity(0.0, float("nan"), undefined=True,
                        reason="its sessions are single requests with no recorded service time, so no concurrency "
                               "can place them (Little's law would pack the whole trace into an instant); sized on "
                               "the arrivals as offered instead")
    runs = {} if runs is None else runs
    probes: list[tuple[float, float]] = []

    def meets(c: float) -> bool:
        runs[c] = simulate(trace, rung_config(spec, rung, ArrivalModel("concurrency", c, seed), 1))
        probes.append((c, slo_ttft(runs[c], spec)))
        return meets_slo(runs[c], spec)

    first = c = float(min(max(start, 1.0), max_sessions))
    lo, hi = (c, None) if meets(c) else (None, c)
    while lo is None and hi is not None and hi > 1.0:
        c = max(hi / 2, 1.0) if hi == first else 1.0  # halve once, then try one session at a time
        lo, hi = (c, hi) if meets(c) else (None, c)
    while hi is None and lo is not None and lo < max_sessions:
        c = min(2 * lo, max_sessions)
        lo, hi = (c, None) if meets(c) else (lo, c)
    while lo is not None and hi is not None and hi / lo > RESOLUTION and len(runs) < max_runs:
        c = math.sqrt(lo * hi)
        lo, hi = (c, hi) if meets(c) else (lo, c)
    if lo is None:
        least = runs[min(runs)]
        return Capacity(0.0, slo_ttft(least, spec), reason="misses it with one session at a time ("
                                                         + "; ".join(slo_misses(least, spec)) + ")", probes=probes)
    return Capacity(lo, slo_ttft(runs[lo], spec), at_limit=hi is None, probes=probes,
                    tokens_per_session_s=billed_tokens(runs[lo]) / max(runs[lo].billed_s * lo, 1e-9))


def billed_tokens(res: SimResult) -> float:
    """Prompt and output tokens of the requests a run bills (those that arrived in its offered window)."""
    return float(res.prompt[res.billed].sum() + res.output[res.billed].sum())


def sample_sessions(trace: Trace, k: int = SAMPLE_SESSIONS) -> Trace:
    """`k` evenly spaced top-level sessions with their sub-agents (the whole trace when it has no more). Block
    ids are renumbered densely: the policy core sizes its per-block arrays (per replica) by the largest id."""
    roots = root_sessions(trace)
    top = np.flatnonzero(roots == np.arange(trace.n_sessions))
    if len(top) <= k:
        return trace
    keep = np.isin(roots, top[np.linspace(0, len(top) - 1, k).round().astype(np.int64)])
    new_id = np.cumsum(keep) - 1
    req = keep[trace.session]
    log = trace.block_log.take(np.flatnonzero(req))  # whole sessions: every parent comes along
    parent = trace.session_parent[keep]
    return Trace(
        block_size=trace.block_size, has_block_ids=trace.has_block_ids,
        session_names=[n for n, kept in zip(trace.session_names, keep, strict=True) if kept],
        session_start=trace.session_start[keep],
        session_parent=np.where(parent >= 0, new_id[np.maximum(parent, 0)], parent).astype(np.int32),
        session_tenant=trace.session_tenant[keep], tenants=list(trace.tenants),
        session=new_id[trace.session[req]].astype(np.int32), time=trace.time[req],
        input_tokens=trace.input_tokens[req], output_tokens=trace.output_tokens[req],
        think_time=trace.think_time[req], api_time=trace.api_time[req], finish=trace.finish[req],
        block_log=log.with_ids(np.unique(log.ids, return_inverse=True)[1]),
        source=f"{trace.source} (sample of {k} sessions)",
        models=list(trace.models), model=trace.model[req],
    )
