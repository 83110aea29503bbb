"""The Ray Serve request router of `agentkv serve --replicas`: Serve asks it for a replica, it asks agentkv's
`Router` (the simulator's, kind "session" by default) over views of the replicas as this router sees them.

A replica's load is the work (prompt + max tokens) of the requests this router sent it that have not finished.
A request finishes when the gateway has relayed its last byte (`finished`, before the client can see the end),
or when Serve reports it done, whichever comes first: Serve's report arrives from a Ray callback thread some
time later, so a client that sends its next request on the reply's end (an agent, a replay at
--max-inflight 1) would otherwise find the last one still counted, on a loaded machine, and be routed by timing
rather than by the load there is. Its cache is a shadow of the prompts sent to it, held to the replica's GPU capacity in blocks (which each
replica reports in its routing stats) and evicted least recently used, as SGLang's router keeps an
approximate tree per worker instead of asking workers what they hold. A replica that dies is forgotten: its
sessions are routed anew, to a replica that finds their prefixes in a shared Redis tier.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

from agentkv.sim.router import Router

LIVE: list[AgentRouter] = []  # routers in this process (the gateway's /metrics reads the stats they hold)


@dataclass(slots=True)
class Routed:
    """What the router reads of a request (computed by the gateway from the request's prompt)."""

    session: str | None
    ids: np.ndarray  # the prompt's full blocks, chained hashes scoped by API key and cache_salt
    prompt_tokens: int
    work_tokens: int  # prompt + the most it may generate
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # names the request to `finished`


def finished(route: Routed) -> None:
    """The gateway has relayed the request's reply (or given up on it): it no longer loads its replica."""
    for router in LIVE:
        router.release(route.token)


@dataclass(slots=True)
class ShadowCache:
    """The blocks a replica was sent, least recently used first; `capacity` 0: not yet known (unbounded)."""

    capacity: int = 0
    blocks: OrderedDict = field(default_factory=OrderedDict)

    def cached_prefix(self, ids: np.ndarray) -> int:
        n = 0
        for b in ids.tolist():
            if b not in self.blocks:
                break
            n += 1
        return n

    def add(self, ids: np.ndarray) -> None:
        for b in ids.tolist():
            self.blocks[b] = None
            self.blocks.move_to_end(b)
        while self.capacity and len(self.blocks) > self.capacity:
            self.blocks.popitem(last=False)


@dataclass(slots=True)
class _View:
    """A replica as `Router.pick` sees it (sim.router.ReplicaView)."""

    name: Hashable
    load: int
    shadow: ShadowCache

    def outstanding_tokens(self) -> int:
        return self.load

    def cached_prefix(self, ids: np.ndarray) -> int:
        return self.shadow.cached_prefix(ids)


class AgentRouter(RequestRouter):
    def initialize_state(self, router: str = "session", block_size: int = 16, **_: Any) -> None:
        self.router = Router(router)
        self.block_size = block_size
        self.load: dict[str, int] = {}
        self.shadow: dict[str, ShadowCache] = {}
        self.in_flight: dict[str, tuple[str, int]] = {}  # internal request id -> (replica, work tokens)
        self.by_token: dict[str, list[str]] = {}  # Routed.token -> its internal request ids (a retry adds one)
        self.lock = threading.Lock()  # `release` comes from the gateway's thread, the rest from Serve's loop
        from agentkv.cluster import routing  # Serve pickles this class by value: its own LIVE is a copy

        routing.LIVE.append(self)

    def _view(self, r: RunningReplica) -> _View:
        name = r.replica_id.unique_id
        shadow = self.shadow.setdefault(name, ShadowCache())
        shadow.capacity = int(r.routing_stats.get("kv_blocks", 0))
        return _View(name, self.load.get(name, 0), shadow)

    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: PendingRequest | None = None) -> list[list[RunningReplica]]:
        if pending_request is None or len(candidate_replicas) < 2:
            return [candidate_replicas]
        route: Routed = pending_request.args[0].route
        reps = sorted(candidate_replicas, key=lambda r: r.replica_id.unique_id)
        i = self.router.pick([self._view(r) for r in reps], route.ids, route.prompt_tokens, self.block_size,
                             route.session)
        # the choice alone: should Serve find it full (or its queue-length probe late, on a loaded machine), it
        # asks again rather than send the request where agentkv's router would not
        return [[reps[i]]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        route: Routed = pending_request.args[0].route
        name, rid = replica_id.unique_id, pending_request.metadata.internal_request_id
        if route.session is not None and self.router.kind == "session":
            self.router.home[route.session] = name  # where it went (the replica set may have changed meanwhile)
        with self.lock:
            self.load[name] = self.load.get(name, 0) + route.work_tokens
            self.in_flight[rid] = (name, route.work_tokens)
            self.by_token.setdefault(route.token, []).append(rid)
        self.shadow.setdefault(name, ShadowCache()).add(route.ids)

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        with self.lock:
            self._done(internal_request_id)

    def release(self, token: str) -> None:
        """`finished`: every attempt of the gateway's request is done."""
        with self.lock:
            for rid in self.by_token.pop(token, ()):
                self._done(rid)

    def _done(self, rid: str) -> None:
        name, work = self.in_flight.pop(rid, ("", 0))  # once: the gateway's word or Serve's, whichever is first
        if name in self.load:
            self.load[name] = max(self.load[name] - work, 0)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        name = replica_id.unique_id
        self.router.forget(name)
        with self.lock:
            self.load.pop(name, None)
        self.shadow.pop(name, None)

    def replica_stats(self) -> dict[str, dict[str, Any]]:
        """Each live replica's last routing stats, by name."""
        return {r.replica_id.unique_id: r.routing_stats for r in self.curr_replicas.values()}
