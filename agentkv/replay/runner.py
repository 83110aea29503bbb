"""Sessions replayed as agents send them: each session's turns in order, paced by the trace, many at once.

A top-level session and its sub-agents form a group that starts together; inside a group every session is
a track of turns. A turn is sent its think time (the trace's `think_time`, else the gap between the previous
turn's start plus its API time and this turn's start) after the previous reply ended, times --time-scale and
capped at --max-think: the agent's own pace is kept while the server's speed decides the rest, as in a
closed-loop agent. A sub-agent's first turn waits, the same way, for the parent turn that spawned it (the
parent's last turn before it in the trace) and then the trace's gap, capped at --max-think too: a sub-agent
that starts days into its session starts when its parent gets there. Groups start at the trace's session starts (scaled) where it has them, else --concurrency
groups run at once, the next one starting as one ends. At most --max-inflight requests are outstanding; a stop (Ctrl-C, or --max-errors
consecutive failures of one kind: a server that refuses everything) cancels what is in flight and keeps every
finished record.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

from agentkv.replay.client import Api, Outcome, send
from agentkv.replay.synth import Synth
from agentkv.workload.arrivals import has_clock, root_sessions
from agentkv.workload.trace import Trace


@dataclass(slots=True)
class Record:
    request: int  # index in the trace
    session: str
    turn: int  # position in its session
    sent: float  # seconds after the replay began
    prompt_planned: int  # prompt tokens the server should count (text + its overhead)
    max_tokens: int
    outcome: Outcome = field(default_factory=Outcome)
    predicted_cached: int = -1  # filled in by `predict`
    predicted_per_tier: dict[str, int] = field(default_factory=dict)
    predicted_replica: int = -1  # behind several replicas: the one the router is predicted to pick


@dataclass(slots=True, frozen=True)
class Pacing:
    time_scale: float = 1.0  # 0: as fast as the server answers
    concurrency: int | None = None  # groups at once; None: the trace's session starts, else 8
    max_inflight: int = 64
    max_think: float = float("inf")  # seconds, after time_scale
    max_errors: int = 0  # stop after this many consecutive failures of one kind; 0: never


def think_s(trace: Trace, prev: int, i: int, pacing: Pacing) -> float:
    """Seconds to wait, as replayed, between request `prev`'s reply and request `i` of the same session."""
    think = float(trace.think_time[i])
    if think != think:
        return gap_s(trace, prev, i, pacing)
    return min(think * pacing.time_scale, pacing.max_think)


def gap_s(trace: Trace, prev: int, i: int, pacing: Pacing) -> float:
    """Seconds, as replayed, from request `prev`'s reply to request `i` by the trace's clock, capped at
    --max-think: the wait before a turn with no think time of its own, or before a sub-agent's first turn."""
    gap = max(0.0, float(trace.time[i] - trace.time[prev]) - float(np.nan_to_num(trace.api_time[prev])))
    return min(gap * pacing.time_scale, pacing.max_think)


def spawned_by(trace: Trace, parent: np.ndarray, first: int) -> int | None:
    """The parent's turn a sub-agent starting with request `first` follows: its last turn before it (None: none)."""
    k = int(np.searchsorted(trace.time[parent], trace.time[first], side="right")) - 1
    return int(parent[k]) if k >= 0 else None


def _waits(trace: Trace, track: np.ndarray, pacing: Pacing) -> np.ndarray:
    """Think time before each turn of a track after its first, as replayed."""
    return np.array([think_s(trace, a, b, pacing) for a, b in zip(track[:-1].tolist(), track[1:].tolist(),
                                                                   strict=True)])


@dataclass(slots=True)
class Plan:
    groups: list[list[np.ndarray]]  # per top-level session: its tracks (request indices in time order)
    starts: np.ndarray | None  # seconds (trace clock) each group starts at, or None: a concurrency pool

    @property
    def n_requests(self) -> int:
        return sum(len(t) for g in self.groups for t in g)

    @property
    def requests(self) -> np.ndarray:
        return np.concatenate([t for g in self.groups for t in g])

    def think_floor(self, trace: Trace, pacing: Pacing) -> float:
        """Seconds the replay waits at least, however fast the server: each group lasts its longest track's think
        times (a sub-agent's from its parent's turn that spawned it); a pool of --concurrency groups runs them side
        by side, clocked groups from their starts."""
        spans = np.array([self._group_floor(trace, g, pacing) for g in self.groups])
        if self.starts is not None:
            return float((self.starts * pacing.time_scale + spans).max())
        return max(float(spans.max()), float(spans.sum()) / (pacing.concurrency or 8))

    @staticmethod
    def _group_floor(trace: Trace, tracks: list[np.ndarray], pacing: Pacing) -> float:
        parent = tracks[0]
        at = np.concatenate([[0.0], np.cumsum(_waits(trace, parent, pacing))])  # each parent turn, at the least
        ends = [float(at[-1])]
        for track in tracks[1:]:
            spawner = spawned_by(trace, parent, int(track[0]))
            start = 0.0 if spawner is None else float(at[np.searchsorted(parent, spawner)])
            start += gap_s(trace, parent[0] if spawner is None else spawner, int(track[0]), pacing)
            ends.append(start + float(_waits(trace, track, pacing).sum()))
        return max(ends)


def plan(trace: Trace, sessions: int | None = None, max_turns: int | None = None,
         concurrency: int | None = None) -> Plan:
    """The first `sessions` top-level sessions with their sub-agents, each cut to its first `max_turns` turns
    (a sub-agent keeps only what its parent's kept turns cover)."""
    roots = root_sessions(trace)
    top = np.flatnonzero(roots == np.arange(trace.n_sessions))[:sessions]
    if sessions is not None and sessions < 1:
        raise ValueError(f"--sessions must be >= 1, got {sessions}")
    bounds = trace.session_bounds()
    groups = []
    for s in top.tolist():
        own = np.arange(bounds[s], bounds[s + 1])[:max_turns]
        if not len(own):
            continue
        horizon = trace.time[own[-1]] if max_turns else np.inf
        tracks = [own]
        for child in np.flatnonzero((roots == s) & (np.arange(trace.n_sessions) != s)).tolist():
            reqs = np.arange(bounds[child], bounds[child + 1])
            reqs = reqs[trace.time[reqs] <= horizon][:max_turns]
            if len(reqs):
                tracks.append(reqs)
        groups.append(tracks)
    if not groups:
        raise ValueError("the trace has no requests to replay")
    starts = None
    if concurrency is None and has_clock(trace):
        t0 = trace.session_start[top]
        starts = np.array([trace.session_start[trace.session[g[0][0]]] for g in groups]) - float(np.min(t0))
    return Plan(groups, starts)


class Runner:
    def __init__(self, client: httpx.AsyncClient, api: Api, synth: Synth, overhead: int, pacing: Pacing,
                 on_done: Callable[[Record], None] = lambda r: None) -> None:
        self.client, self.api, self.synth, self.overhead, self.pacing = client, api, synth, overhead, pacing
        self.on_done = on_done
        self.records: list[Record] = []
        self.stop = asyncio.Event()
        self.halted = ""  # why the run stopped itself, if it did
        self._streak: tuple[str, int] = ("", 0)  # the last failure's kind, and how many in a row
        self._inflight = asyncio.Semaphore(pacing.max_inflight)
        self._t0 = 0.0
        self._wakes: list[float] = []  # when each turn now waiting on think time is due

    async def run(self, p: Plan) -> list[Record]:
        """Replay the plan; returns the records of every request sent (cancelled ones included)."""
        self._t0 = time.perf_counter()
        pool = asyncio.Semaphore(self.pacing.concurrency or 8)
        tasks = [asyncio.create_task(self._group(g, None if p.starts is None else float(p.starts[k]), pool))
                 for k, g in enumerate(p.groups)]
        stopper = asyncio.create_task(self.stop.wait())
        running = asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.wait([running, stopper], return_when=asyncio.FIRST_COMPLETED)
        for t in tasks:
            t.cancel()
        stopper.cancel()
        await asyncio.gather(running, return_exceptions=True)
        return sorted(self.records, key=lambda r: r.sent)

    async def _group(self, tracks: list[np.ndarray], start: float | None, pool: asyncio.Semaphore) -> None:
        if start is not None:
            origin = float(self.synth.trace.time[tracks[0][0]])  # the group's clock starts at its first turn
            await self._sleep_until((start + origin) * self.pacing.time_scale)
            await self._tracks(tracks)
            return
        async with pool:
            await self._tracks(tracks)

    async def _tracks(self, tracks: list[np.ndarray]) -> None:
        """The parent's turns, and each sub-agent's once the parent's turn that spawned it has its reply."""
        replied = {int(i): asyncio.Event() for i in tracks[0].tolist()}
        spawners = [spawned_by(self.synth.trace, tracks[0], int(t[0])) for t in tracks[1:]]
        await asyncio.gather(self._track(tracks[0], None, replied),
                             *(self._track(t, s, replied) for t, s in zip(tracks[1:], spawners, strict=True)))

    async def _track(self, reqs: np.ndarray, spawner: int | None, replied: dict[int, asyncio.Event]) -> None:
        """One session's turns in order; `spawner`: the parent's request this sub-agent waits for."""
        tr = self.synth.trace
        if spawner is not None:
            await replied[spawner].wait()
        done = self._now()
        for turn, i in enumerate(reqs.tolist()):
            if turn:
                await self._sleep_until(done + think_s(tr, int(reqs[turn - 1]), i, self.pacing))
            elif spawner is not None:
                await self._sleep_until(done + gap_s(tr, spawner, i, self.pacing))
            if self.stop.is_set():
                return
            await self._send(i, turn)
            done = self._now()
            if i in replied:
                replied[i].set()

    async def _send(self, i: int, turn: int) -> None:
        words = self.synth.prompt_words(i)
        text = self.synth.text(words)
        rec = Record(i, self.synth.trace.session_names[self.synth.trace.session[i]], turn, float("nan"),
                     len(words) + self.overhead, self.synth.max_tokens(i))
        async with self._inflight:
            rec.sent = self._now()
            try:
                rec.outcome = await send(self.client, self.api, text, rec.max_tokens, rec.session)
            except asyncio.CancelledError:
                rec.outcome = Outcome(error="cancelled", detail="the replay was stopped")
                self.records.append(rec)
                raise
        self.records.append(rec)
        self.on_done(rec)
        self._count_failure(rec.outcome)

    def _count_failure(self, o: Outcome) -> None:
        kind, n = self._streak
        self._streak = (o.error, n + 1 if o.error and o.error == kind else int(bool(o.error)))
        if self.pacing.max_errors and self._streak[1] >= self.pacing.max_errors and not self.halted:
            self.halted = (f"{self._streak[1]} requests in a row failed with {o.error} (--max-errors "
                           f"{self.pacing.max_errors}); the last: {o.detail[:200]}")
            self.stop.set()

    def _now(self) -> float:
        return time.perf_counter() - self._t0

    def waiting(self) -> tuple[int, float]:
        """Turns now waiting on think time, and seconds until the first of them is sent (for the progress)."""
        return len(self._wakes), (min(self._wakes) - self._now() if self._wakes else 0.0)

    async def _sleep_until(self, at: float) -> None:
        delay = at - self._now()
        if delay <= 0:
            return
        self._wakes.append(at)
        try:
            await asyncio.sleep(delay)
        finally:
            self._wakes.remove(at)
