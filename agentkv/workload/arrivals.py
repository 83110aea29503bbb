"""Arrival models: where on one deployment's clock each session of a trace starts.

A session-structured trace (kv-cache-tester, the generator) records each session on its own clock. To replay
many sessions on one deployment, top-level sessions start at the points of a Poisson process, sized either
by a target number of concurrently open sessions (Little's law: rate = concurrency / mean session length) or
by sessions per second; or, where the trace has a clock of its own, at the trace's own timestamps.
Sub-agents keep their place on their parent's clock and requests inside a session keep their relative times.

Placed sessions start warm, as in the stationary state: n sessions at rate λ offer load for a window of n / λ
seconds, and each starts at a uniform point of it (a Poisson process given n points) and wraps around its end,
so a session still running at the window's end is the one already open at its start. `place` splits a session
at each wrap into segments served as sessions of their own (a later segment is another user's copy of it: its
private blocks get fresh ids, so no session hits its own future), and the sessions open at once average the
concurrency offered from the first second, where a cold start ramped up from none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from agentkv.workload.builder import densify
from agentkv.workload.trace import NO_PARENT, Trace

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


def tokens_per_open_second(trace: Trace) -> float:
    """Input tokens per second a top-level session is open (sub-agents counted with it): the load one open
    session offers. At a given concurrency, a sample of sessions carries the whole trace's load only if it
    sends tokens at the same rate; this says how far it does."""
    top = root_sessions(trace) == np.arange(trace.n_sessions)
    open_s = float(session_spans(trace)[top].sum())
    return float(trace.input_tokens.sum()) / open_s if open_s > 0 else 0.0


def arrival_times(trace: Trace, model: ArrivalModel) -> np.ndarray:
    """Arrival time (seconds) of every request: on the trace's clock from its first session, else wrapped into
    the offered window [0, n / rate) from each session's uniform start (see `place`)."""
    roots = root_sessions(trace)
    top = np.flatnonzero(roots == np.arange(trace.n_sessions))
    if model.mode == "trace":
        if not has_clock(trace):
            raise ValueError("trace has no session start times: place sessions with a concurrency or a rate")
        start = np.zeros(trace.n_sessions)
        start[top] = trace.session_start[top] - np.min(trace.session_start[top])
        return start[roots[trace.session]] + trace.time
    absolute = _unwrapped(trace, model, roots, top)
    return np.mod(absolute, _window(trace, model, top)) if len(absolute) else absolute


def _window(trace: Trace, model: ArrivalModel, top: np.ndarray) -> float:
    return len(top) / _start_rate(trace, model, top) if len(top) else 0.0


def _unwrapped(trace: Trace, model: ArrivalModel, roots: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Each request's time from the window's start before wrapping: its session's uniform start + its own time."""
    rng = np.random.default_rng(model.seed)
    start = np.zeros(trace.n_sessions)
    start[top] = rng.uniform(0.0, _window(trace, model, top), size=len(top))
    return start[roots[trace.session]] + trace.time


PLACEMENTS_KEPT = 3  # a report's three traces (probes, modes, whole): placed once per process
_placed: list[tuple[Trace, ArrivalModel, tuple[Trace, np.ndarray]]] = []


def place(trace: Trace, model: ArrivalModel) -> tuple[Trace, np.ndarray]:
    """The trace as one deployment serves it, and every request's arrival. On the trace's own clock, itself; else
    every session is cut where its requests wrap around the offered window, each later segment a session of its
    own whose clock starts before 0 (already open) and whose session-private blocks get fresh ids (another user's
    copy of that session). Requests keep their order and count, so results index like the trace.
    The last few placements are kept (read-only): every simulation of a report places the same trace the same
    way, and a whole trace's placement copies its block log (0.55 GB at 449k requests); placed in a report's
    driver before its workers fork, they share one copy."""
    for t, m, out in _placed:
        if t is trace and m == model:
            return out
    out = _place(trace, model)
    out[1].flags.writeable = False
    _placed.insert(0, (trace, model, out))
    del _placed[PLACEMENTS_KEPT:]
    return out


def _place(trace: Trace, model: ArrivalModel) -> tuple[Trace, np.ndarray]:
    arrivals = arrival_times(trace, model)
    if model.mode == "trace" or not trace.n_requests:
        return trace, arrivals
    roots = root_sessions(trace)
    top = np.flatnonzero(roots == np.arange(trace.n_sessions))
    lap = np.floor(_unwrapped(trace, model, roots, top) / _window(trace, model, top)).astype(np.int64)
    return (_split(trace, roots, lap) if lap.any() else trace), arrivals


def _split(trace: Trace, roots: np.ndarray, lap: np.ndarray) -> Trace:
    """Sessions cut at changes of `lap` (per request); a segment's parent is its root's segment of the same lap."""
    new_seg = np.concatenate([[True], (trace.session[1:] != trace.session[:-1]) | (lap[1:] != lap[:-1])])
    seg = np.cumsum(new_seg) - 1
    first = np.flatnonzero(new_seg)
    old = trace.session[first]
    key = {(int(roots[s]), int(k)): i for i, (s, k) in enumerate(zip(old, lap[first], strict=True)) if roots[s] == s}
    parent = np.array([NO_PARENT if roots[s] == s else key.get((int(roots[s]), int(k)), NO_PARENT)
                       for s, k in zip(old, lap[first], strict=True)], dtype=np.int32)
    log = trace.block_log
    if trace.has_block_ids and len(log.ids):  # a segment's first request no longer extends one in another segment
        log = log.detach(np.flatnonzero((log.parent >= 0) & (seg[np.maximum(log.parent, 0)] != seg)))
        ids, offset, private = log.ids.copy(), trace.n_block_ids, _private(trace, roots)
        entry_lap = lap[log.owners()]
        for k in np.unique(lap[lap > 0]):  # one dense range of fresh ids per lap
            at = np.flatnonzero(entry_lap == k)
            at = at[private[ids[at]]]
            fresh, n = densify(ids[at])
            ids[at] = fresh + offset
            offset += n
        log = log.with_ids(ids)
    return replace(
        trace, session_names=[f"{trace.session_names[s]}@{k}" if k else trace.session_names[s]
                              for s, k in zip(old, lap[first], strict=True)],
        session_start=np.full(len(first), np.nan), session_parent=parent,
        session_tenant=trace.session_tenant[old], session=seg.astype(np.int32), block_log=log,
    )


def _private(trace: Trace, roots: np.ndarray) -> np.ndarray:
    """Per block id: held by one top-level session (with its sub-agents) only. Whichever owner the scatter keeps,
    an id with two owners has an entry that disagrees with it. Kept for the last trace (a report places one trace
    at many loads)."""
    if _PRIVATE and _PRIVATE[0] is trace:
        return _PRIVATE[1]
    ids = trace.block_log.ids  # a session's new ids name every id it holds
    owner = roots[trace.session][trace.block_log.owners()]
    kept = np.full(trace.n_block_ids, -1, dtype=np.int64)
    kept[ids] = owner
    private = np.ones(trace.n_block_ids, dtype=bool)
    private[ids[owner != kept[ids]]] = False
    _PRIVATE[:] = [trace, private]
    return private


_PRIVATE: list = []


def offered_seconds(trace: Trace, model: ArrivalModel, arrivals: np.ndarray) -> float:
    """How long the trace offers load: the window its top-level sessions start in at the model's rate
    (n / rate), or on the trace's own clock its arrivals' span. A finite trace ends in a drain (one Claude Code
    session spans 122 h, long after the others ended): billing the makespan would charge that idle tail."""
    if model.mode == "trace" or not len(arrivals):
        return float(np.ptp(arrivals)) if len(arrivals) else 0.0
    return _window(trace, model, np.flatnonzero(root_sessions(trace) == np.arange(trace.n_sessions)))


def open_sessions(trace: Trace, model: ArrivalModel) -> tuple[float, int]:
    """Top-level sessions open at once (from their clock's start to the end of their last request, thinking
    included) over the offered window: (mean, peak). Placed sessions wrap around the window, so the mean is the
    concurrency offered from the first second; on a trace's own clock, what the trace holds."""
    arrivals = arrival_times(trace, model)
    window = offered_seconds(trace, model, arrivals)
    if model.mode == "trace":
        start, end = session_intervals(trace, arrivals)
        start, end = start - float(start.min(initial=0.0)), end - float(start.min(initial=0.0))
    else:  # the unwrapped interval of each session, cut into one piece per lap of the window
        roots = root_sessions(trace)
        top = np.flatnonzero(roots == np.arange(trace.n_sessions))
        first = np.full(trace.n_sessions, np.inf)
        np.minimum.at(first, roots[trace.session], _unwrapped(trace, model, roots, top) - trace.time)
        live = top[np.isfinite(first[top])]  # sessions left with requests (a window fit can reject them all)
        s0 = first[live]
        s1 = s0 + session_spans(trace)[live]
        laps = np.floor(s1 / window).astype(np.int64) + 1 if window > 0 else np.ones(len(live), dtype=np.int64)
        k = np.arange(int(laps.sum())) - np.repeat(np.cumsum(laps) - laps, laps)
        start = np.maximum(np.repeat(s0, laps), k * window) - k * window
        end = np.minimum(np.repeat(s1, laps), (k + 1) * window) - k * window
    if window <= 0 or not len(start):
        return 0.0, 0
    lo, hi = np.clip(start, 0.0, window), np.clip(end, 0.0, window)
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
