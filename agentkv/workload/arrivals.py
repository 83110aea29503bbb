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
        if model.value <= 0:
            raise ValueError(f"arrival {model.mode} must be > 0, got {model.value}")
        if model.mode == "concurrency":
            mean_span = float(np.mean(session_spans(trace)[top])) if len(top) else 0.0
            rate = model.value / max(mean_span, 1e-9)
        else:
            rate = model.value
        rng = np.random.default_rng(model.seed)
        gaps = rng.exponential(1.0 / rate, size=len(top))
        gaps[0] = 0.0
        start[rng.permutation(top)] = np.cumsum(gaps)
    return start[roots[trace.session]] + trace.time


def replay_order(arrivals: np.ndarray) -> np.ndarray:
    """Requests in arrival order (ties keep trace order)."""
    return np.argsort(arrivals, kind="stable")
