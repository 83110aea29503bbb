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
"""

from __future__ import annotations

from collections import Counter
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
             session: Hashable | None = None) -> int:
        i = self._choose(replicas, ids, prompt_tokens, block_size, session)
        if self.kind == "session" and session is not None:
            self.home[session] = replicas[i].name
        return i

    def forget(self, name: Hashable) -> None:
        """A replica is gone: its sessions are new sessions again."""
        self.home = {s: r for s, r in self.home.items() if r != name}

    def _choose(self, replicas: Seq[ReplicaView], ids: np.ndarray, prompt_tokens: int, block_size: int,
                session: Hashable | None) -> int:
        if len(replicas) == 1:
            return 0
        if self.kind == "round-robin":
            self._next = (self._next + 1) % len(replicas)
            return self._next
        names = [r.name for r in replicas]
        if self.kind == "session" and self.home.get(session) in names:
            return names.index(self.home[session])
        load = [r.outstanding_tokens() for r in replicas]  # a handful of replicas: Python ints beat numpy calls
        if self.kind == "least-loaded":
            return min(range(len(replicas)), key=load.__getitem__)  # the first of the least loaded
        work = [w + max(prompt_tokens - r.cached_prefix(ids) * block_size, 0)
                for r, w in zip(replicas, load, strict=True)]
        if self.kind == "prefix-aware":
            return min(range(len(replicas)), key=lambda i: (work[i], load[i]))
        homed = Counter(self.home.values())  # one pass over the sessions, not one per replica
        return min(range(len(replicas)), key=lambda i: (work[i], load[i], homed[names[i]]))
