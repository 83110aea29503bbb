"""Routers spread requests over replicas: round-robin, least-loaded, or prefix-aware.

Prefix-aware sends a request where it costs least: the prompt tokens that replica would have to compute
(those it does not hold cached) plus the work already queued there. Pure "most cached prefix" routing
piles every session of an agent onto the replica holding the agent's shared system prompt; weighing the
queue keeps sessions sticky while load is even and spreads them when it is not (as SGLang's cache-aware
router balances hit rate against load)."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Protocol

import numpy as np


class ReplicaView(Protocol):
    def outstanding_tokens(self) -> int: ...

    def cached_prefix(self, ids: np.ndarray) -> int: ...  # blocks


ROUTERS = ("round-robin", "least-loaded", "prefix-aware")


class Router:
    def __init__(self, kind: str) -> None:
        if kind not in ROUTERS:
            raise ValueError(f"unknown router '{kind}' (routers: {', '.join(ROUTERS)})")
        self.kind = kind
        self._next = 0

    def pick(self, replicas: Seq[ReplicaView], ids: np.ndarray, prompt_tokens: int, block_size: int) -> int:
        if len(replicas) == 1:
            return 0
        if self.kind == "round-robin":
            self._next = (self._next + 1) % len(replicas)
            return self._next
        load = np.array([r.outstanding_tokens() for r in replicas], dtype=np.float64)
        if self.kind == "least-loaded":
            return int(np.argmin(load))
        cached = np.array([r.cached_prefix(ids) for r in replicas], dtype=np.float64) * block_size
        work = load + np.maximum(prompt_tokens - cached, 0.0)
        return int(np.lexsort((load, work))[0])
