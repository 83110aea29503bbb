"""Routers spread requests over replicas: round-robin, least-loaded, prefix-aware, or session.

Prefix-aware sends a request where it costs least: the prompt tokens that replica would have to compute
(those it does not hold cached) plus the work already queued there. Pure "most cached prefix" routing
piles every session of an agent onto the replica holding the agent's shared system prompt; weighing the
queue keeps sessions sticky while load is even and spreads them when it is not (as SGLang's cache-aware
router balances hit rate against load). A replica's cache is asked only where its best case (all the blocks of
the prompt it can hold, held) could beat the best answer found so far: with a bound from the caller (a replica a
session never ran on holds at most what other sessions share), a fleet asks one or two caches, not all.

Session adds affinity in front: a session's requests go to the replica that served it last while that
replica is up; a new session (or one whose replica is gone) goes where prefix-aware sends it, ties broken
by the fewest sessions already there, so idle replicas share new sessions. This one function decides both
in the simulator and in `agentkv serve --replicas` (the Ray Serve request router calls it), so a simulated
fleet and a served one route alike.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sized
from collections.abc import Sequence as Seq
from typing import Protocol


class ReplicaView(Protocol):
    name: Hashable  # stable across requests (a replica's index in the simulator, its Ray Serve id when served)

    def outstanding_tokens(self) -> int: ...

    def cached_prefix(self, ids: Sized) -> int: ...  # blocks of the prompt `pick` was given, as given


ROUTERS = ("round-robin", "least-loaded", "prefix-aware", "session")


class Router:
    def __init__(self, kind: str) -> None:
        if kind not in ROUTERS:
            raise ValueError(f"unknown router '{kind}' (routers: {', '.join(ROUTERS)})")
        self.kind = kind
        self._next = 0
        self.home: dict[Hashable, Hashable] = {}  # session -> the name of the replica that served it last

    def pick(self, replicas: Seq[ReplicaView], ids: Sized, prompt_tokens: int, block_size: int,
             session: Hashable | None = None, most: Seq[int] | None = None) -> int:
        """ids: the prompt's full block ids, or the caller's own view of them (`sim.routed_prompt`), handed to each
        replica's `cached_prefix` as is. most: per replica, the most blocks of the prompt it can hold, where the
        caller knows better than `len(ids)` (a simulation knows which replicas never served the session)."""
        i = self._choose(replicas, ids, prompt_tokens, block_size, session, most)
        if self.kind == "session" and session is not None:
            self.home[session] = replicas[i].name
        return i

    def forget(self, name: Hashable) -> None:
        """A replica is gone: its sessions are new sessions again."""
        self.home = {s: r for s, r in self.home.items() if r != name}

    def _choose(self, replicas: Seq[ReplicaView], ids: Sized, prompt_tokens: int, block_size: int,
                session: Hashable | None, most: Seq[int] | None) -> int:
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
        homed = Counter(self.home.values()) if self.kind == "session" else None  # one pass over the sessions
        return _cheapest(replicas, ids, prompt_tokens, block_size, load, homed,
                         [len(ids)] * len(replicas) if most is None else most)


def _cheapest(replicas: Seq[ReplicaView], ids: Sized, prompt_tokens: int, block_size: int, load: list[int],
              homed: Counter | None, most: Seq[int]) -> int:
    """The replica whose (work, load, [sessions homed there,] index) is least, work being its load plus the prompt
    tokens it does not hold. Replica i holds at most `most[i]` of the prompt's blocks, so its key is at least the
    one it would have holding that many: replicas are asked in that bound's order, and the asking stops where the
    bound passes the best key found (a cache is not looked up when even its best case could not win)."""

    def key(i: int, cached: int) -> tuple:
        work = load[i] + max(prompt_tokens - cached * block_size, 0)
        return (work, load[i], i) if homed is None else (work, load[i], homed[replicas[i].name], i)

    best: tuple | None = None
    for bound in sorted(key(i, most[i]) for i in range(len(replicas))):
        if best is not None and bound > best:
            break
        i = bound[-1]
        got = key(i, replicas[i].cached_prefix(ids))
        best = got if best is None or got < best else best
    return best[-1]
