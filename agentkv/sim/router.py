"""Routers spread requests over replicas: round-robin, least-loaded, prefix-aware, or session.

Prefix-aware sends a request where it costs least: the prompt tokens that replica would have to compute
(those it does not hold cached) plus the work already queued there. Pure "most cached prefix" routing
piles every session of an agent onto the replica holding the agent's shared system prompt; weighing the
queue keeps sessions sticky while load is even and spreads them when it is not (as SGLang's cache-aware
router balances hit rate against load).

Session adds affinity in front: a session's requests go to the replica that served it last while that
replica is up; a new session (or one whose replica is gone) goes where prefix-aware sends it, ties broken
by the fewest sessions already there, so idle replicas share new sessions. This one function decides both
in the simulator and in `agentkv serve --replicas` (the Ray Serve request router calls it), so a simulated
fleet and a served one route alike.

A caller that knows cheap upper bounds on what each replica holds of the prompt (the simulator: which replicas
have seen its blocks at all, `sim/local_ids.SeenBy`) passes them: replicas are then asked in order of the least
work they could cost, and those whose least work exceeds the best exact work found are not asked (they could
not be chosen), so the choice is the one asking every replica would give.
"""

from __future__ import annotations

from collections.abc import Hashable
from collections.abc import Sequence as Seq
from typing import Protocol

import numpy as np


class ReplicaView(Protocol):
    name: Hashable  # stable across requests (a replica's index in the simulator, its Ray Serve id when served)

    def outstanding_tokens(self) -> int: ...

    def cached_prefix(self, ids: np.ndarray) -> int: ...  # blocks


ROUTERS = ("round-robin", "least-loaded", "prefix-aware", "session")


class Router:
    def __init__(self, kind: str) -> None:
        if kind not in ROUTERS:
            raise ValueError(f"unknown router '{kind}' (routers: {', '.join(ROUTERS)})")
        self.kind = kind
        self._next = 0
        self.home: dict[Hashable, Hashable] = {}  # session -> the name of the replica that served it last

    def pick(self, replicas: Seq[ReplicaView], ids: np.ndarray, prompt_tokens: int, block_size: int,
             session: Hashable | None = None, bounds: Seq[int] | None = None) -> int:
        """The replica to send the request to. `bounds`: an upper bound on each replica's `cached_prefix(ids)`,
        where the caller has one cheaply (see the module docstring)."""
        i = self._choose(replicas, ids, prompt_tokens, block_size, session, bounds)
        if self.kind == "session" and session is not None:
            self.home[session] = replicas[i].name
        return i

    def forget(self, name: Hashable) -> None:
        """A replica is gone: its sessions are new sessions again."""
        self.home = {s: r for s, r in self.home.items() if r != name}

    def _choose(self, replicas: Seq[ReplicaView], ids: np.ndarray, prompt_tokens: int, block_size: int,
                session: Hashable | None, bounds: Seq[int] | None) -> int:
        if len(replicas) == 1:
            return 0
        if self.kind == "round-robin":
            self._next = (self._next + 1) % len(replicas)
            return self._next
        names = [r.name for r in replicas]
        if self.kind == "session" and self.home.get(session) in names:
            return names.index(self.home[session])
        load = np.array([r.outstanding_tokens() for r in replicas], dtype=np.float64)
        if self.kind == "least-loaded":
            return int(np.argmin(load))
        if bounds is None:
            cached = np.array([r.cached_prefix(ids) for r in replicas], dtype=np.float64) * block_size
            work = load + np.maximum(prompt_tokens - cached, 0.0)
        else:
            work = _work_within(replicas, ids, prompt_tokens, block_size, load, bounds)
        if self.kind == "prefix-aware":
            return int(np.lexsort((load, work))[0])
        homed = np.array([sum(h == n for h in self.home.values()) for n in names])
        return int(np.lexsort((homed, load, work))[0])


def _work_within(replicas: Seq[ReplicaView], ids: np.ndarray, prompt_tokens: int, block_size: int,
                 load: np.ndarray, bounds: Seq[int]) -> np.ndarray:
    """Each replica's work (queued tokens + prompt tokens it lacks): exact for every replica that could be the
    least, a lower bound above that least for the others, which are not asked."""
    work = load + np.maximum(prompt_tokens - np.asarray(bounds, dtype=np.float64) * block_size, 0.0)
    best = np.inf
    for i in np.argsort(work, kind="stable").tolist():
        if work[i] > best:
            break  # this one and all after it cost more than the best even at their bound
        work[i] = load[i] + max(prompt_tokens - replicas[i].cached_prefix(ids) * block_size, 0.0)
        best = min(best, work[i])
    return work

