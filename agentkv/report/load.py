"""Cost against load: $/Mtok from a handful to thousands of concurrent sessions, per lever, beside the APIs that
sell the same model, and the load at which self-hosting starts to win.

A fleet at load L runs ⌈L / capacity⌉ replicas, each lever's capacity per replica as measured within the SLO
(`capacity.session_capacity`: one replica, simulated); the tokens it is paid for are L × the tokens an open
session sends per second at that capacity (measured in the same run). So $/Mtok falls as 1/L while one replica
is part-idle and then saw-tooths down to its floor, a full replica's cost. An API's $/Mtok does not depend on
load: the trace replayed at its prices and caching. Break-even is the load one replica must carry for its cost to
match the API's: below it the API is cheaper, above it (up to the replica's capacity, and with fleets of full
replicas) self-hosting is. Scaling one replica's capacity to a fleet assumes the router keeps sessions on their
replica (prefix-aware routing does); the sized view checks it by simulation at the offered load.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from agentkv.cost.providers import ProviderCost
from agentkv.report.capacity import Capacity

LOADS = (5, 20, 50, 100, 200, 500, 1000, 5000)  # concurrent sessions the curve is drawn at
NEAR = 1.02  # levers whose full-replica $/Mtok is within 2% of the cheapest are as good


@dataclass(slots=True, frozen=True)
class LoadCurve:
    lever: str
    per_replica: float  # concurrent sessions one replica serves within the SLO (0: none)
    tokens_per_session_s: float
    usd_per_replica_hour: float

    def gpus(self, sessions: float, tp: int) -> int | None:
        return math.ceil(sessions / self.per_replica) * tp if self.per_replica > 0 else None

    def usd_per_mtok(self, sessions: float) -> float | None:
        """The fleet's $ per million tokens at `sessions` concurrent sessions; None where no size meets the SLO."""
        if self.per_replica <= 0 or self.tokens_per_session_s <= 0:
            return None
        replicas = math.ceil(sessions / self.per_replica)
        return replicas * self.usd_per_replica_hour / 3600 / (sessions * self.tokens_per_session_s) * 1e6

    @property
    def floor(self) -> float | None:
        """$/Mtok of full replicas: the least this lever can cost at any load."""
        return self.usd_per_mtok(self.per_replica) if self.per_replica > 0 else None

    def break_even(self, api_usd_per_mtok: float) -> float | None:
        """Sessions one replica must carry to cost what the API does; None where even a full replica costs more."""
        if self.floor is None or self.floor > api_usd_per_mtok:
            return None
        return self.usd_per_replica_hour / 3600 * 1e6 / (self.tokens_per_session_s * api_usd_per_mtok)


def load_curve(lever: str, capacity: Capacity, usd_per_gpu_hour: float, tp: int) -> LoadCurve:
    return LoadCurve(lever, capacity.sessions_per_replica, capacity.tokens_per_session_s, usd_per_gpu_hour * tp)


@dataclass(slots=True, frozen=True)
class Crossing:
    api: ProviderCost
    lever: str  # the first lever within NEAR of the cheapest at full replicas: the levers after it add little
    sessions: float | None  # break-even concurrent sessions per replica (None: self-hosting never wins)
    floor: float | None  # that lever's $/Mtok at full replicas


def crossings(curves: list[LoadCurve], apis: list[ProviderCost]) -> list[Crossing]:
    """For each API of the same model: where the cheapest lever at full replicas breaks even with it."""
    live = [c for c in curves if c.floor is not None]
    if not live:
        return [Crossing(a, "", None, None) for a in apis]
    cheapest = min(c.floor for c in live)  # type: ignore[type-var]
    best = next(c for c in live if c.floor <= NEAR * cheapest)  # type: ignore[operator]
    return [Crossing(a, best.lever, best.break_even(a.usd_per_mtok), best.floor) for a in apis]
