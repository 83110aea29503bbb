"""Arrival models: where on one deployment's clock each session of a trace starts.

A session-structured trace (kv-cache-tester, the generator) records each session on its own clock. To replay
many sessions on one deployment, top-level sessions start at the points of a Poisson process, sized either
by a target number of concurrently open sessions (Little's law: rate = concurrency / mean session length) or
by sessions per second; or, where the trace has a clock of its own, at the trace's own timestamps.
Sub-agents keep their place on their parent's clock and requests inside a session keep their relative times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from agentkv.workload.trace import Trace

Mode = Literal["trace", "concurrency", "rate"]


@dataclass(slots=True, frozen=True)
class ArrivalModel:
    mode: Mode = "concurrency"
    value: float = 20.0  # open sessions (concurrency) or sessions per second (rate); unused for "trace"
    seed: int = 0

    def describe(self) -> str:
        if self.mode == "trace":
            return "trace timestamps"
        unit = "concurrent sessions" if self.mode == "concurrency" else "sessions/s"
        return f"Poisson session starts, {self.value:g} {unit} (seed {self.seed})"

    @staticmethod
    def default_for(trace: Trace) -> ArrivalModel:
        """The trace's own clock where it has one, else 20 concurrent sessions (a busy agent deployment)."""
        return ArrivalModel("trace") if has_clock(trace) else ArrivalModel("concurrency", 20.0)


def has_clock(trace: Trace) -> bool:
    roots = root_sessions(trace)
    return bool(trace.n_sessions) and not np.any(np.isnan(trace.session_start[roots == np.arange(len(roots))]))


def root_sessions(trace: Trace) -> np.ndarray:
    """For every session, its top-level ancestor."""
    root = np.arange(trace.n_sessions, dtype=np.int64)
    parent = trace.session_parent.astype(np.int64)
    for _ in range(trace.n_sessions):
        p = parent[root]
        if not np.any(p >= 0):
            return root
        root = np.where(p >= 0, p, root)
    raise ValueError("trace: sub-agent parent links form a cycle")


def session_spans(trace: Trace) -> np.ndarray:
    """Seconds from each top-level session's start to the end of its last request (api time counted where known)."""
    roots = root_sessions(trace)
    end = trace.time + np.nan_to_num(trace.api_time.astype(np.float64), nan=0.0)
    span = np.zeros(trace.n_sessions)
    np.maximum.at(span, roots[trace.session], end)
    return span


def arrival_times(trace: Trace, model: ArrivalModel) -> np.ndarray:
    """Absolute arrival time (seconds, first session at 0) of every request."""
    roots = root_sessions(trace)
    top = np.flatnonzero(roots == np.arange(trace.n_sessions))
    start = np.zeros(trace.n_sessions)
    if model.mode == "trace":
        if not has_clock(trace):
            raise ValueError("trace has no session start times: place sessions with a concurrency or a rate")
        start[top] = trace.session_start[top] - np.min(trace.session_start[top])
    else:
        rng = np.random.default_rng(model.seed)
        gaps = rng.exponential(1.0 / _start_rate(trace, model, top), size=len(top))
        gaps[0] = 0.0
        start[rng.permutation(top)] = np.cumsum(gaps)
    return start[roots[trace.session]] + trace.time


def offered_seconds(trace: Trace, model: ArrivalModel, arrivals: np.ndarray) -> float:
    """How long the trace offers load: the time its top-level sessions take to start at the model's rate
    (n / rate), or on the trace's own clock its arrivals' span. A finite trace ends in a drain (one Claude Code
    session spans 122 h, long after the others ended): billing the makespan would charge that idle tail."""
    if model.mode == "trace" or not len(arrivals):
        return float(np.ptp(arrivals)) if len(arrivals) else 0.0
    top = np.flatnonzero(root_sessions(trace) == np.arange(trace.n_sessions))
    return len(top) / _start_rate(trace, model, top)


def open_sessions(trace: Trace, model: ArrivalModel) -> tuple[float, int]:
    """Top-level sessions open at once (first arrival to the end of the last request) over the offered window:
    (mean, peak). Little's law holds in steady state only; a finite trace ramps up from no open session, and its
    long sessions reach steady state late, so the mean is below the concurrency asked for."""
    arrivals = arrival_times(trace, model)
    window = offered_seconds(trace, model, arrivals)
    start, end = session_intervals(trace, arrivals)
    if window <= 0 or not len(start):
        return 0.0, 0
    t0 = float(start.min())
    lo, hi = np.clip(start - t0, 0.0, window), np.clip(end - t0, 0.0, window)
    edges = np.concatenate([np.stack([lo, np.ones_like(lo)], 1), np.stack([hi, -np.ones_like(hi)], 1)])
    edges = edges[np.lexsort((edges[:, 1], edges[:, 0]))]  # at equal times a session ends before one starts
    return float((hi - lo).sum()) / window, int(np.cumsum(edges[:, 1]).max(initial=0))


def session_intervals(trace: Trace, arrivals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) on the deployment's clock of every top-level session: where its clock's zero falls, and the
    end of its last request (sub-agents included)."""
    roots = root_sessions(trace)
    top = roots == np.arange(trace.n_sessions)
    start = np.full(trace.n_sessions, np.inf)
    np.minimum.at(start, roots[trace.session], arrivals - trace.time)
    return start[top], start[top] + session_spans(trace)[top]


def _start_rate(trace: Trace, model: ArrivalModel, top: np.ndarray) -> float:
    """Top-level session starts per second: as given, or by Little's law from a concurrency."""
    if model.value <= 0:
        raise ValueError(f"arrival {model.mode} must be > 0, got {model.value}")
    if model.mode == "rate":
        return model.value
    mean_span = float(np.mean(session_spans(trace)[top])) if len(top) else 0.0
    return model.value / max(mean_span, 1e-9)


def replay_order(arrivals: np.ndarray) -> np.ndarray:
    """Requests in arrival order (ties keep trace order)."""
    return np.argsort(arrivals, kind="stable")
