"""The prefix-aware and session routers ask a replica's cache only when its best case could win, and pick what
asking every replica would; a simulation bounds the replicas a session never ran on by the lead other sessions
share (`Trace.lead_in_other_sessions`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from agentkv.report.ladder import LADDER, DeploymentSpec, rung_config
from agentkv.sim.router import Router
from agentkv.sim.simulator import Simulator
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.builder import TraceBuilder
from agentkv.workload.generator import GeneratorConfig, generate


@dataclass
class FakeReplica:
    name: int
    load: int
    cached: int
    asked: int = 0

    def outstanding_tokens(self) -> int:
        return self.load

    def cached_prefix(self, ids: np.ndarray) -> int:
        self.asked += 1
        return self.cached


def asking_every_replica(kind: str, fleet: list[FakeReplica], prompt_tokens: int, home: dict) -> int:
    homed = [list(home.values()).count(r.name) for r in fleet]
    keys = [(r.load + max(prompt_tokens - r.cached * 16, 0), r.load, *([homed[i]] if kind == "session" else []), i)
            for i, r in enumerate(fleet)]
    return min(keys)[-1]


@pytest.mark.parametrize("kind", ["prefix-aware", "session"])
def test_the_bounded_search_picks_what_asking_every_replica_would(kind):
    rng = np.random.default_rng(7)
    ids = np.arange(400)
    asked = total = 0
    for trial in range(300):
        n = int(rng.integers(2, 12))
        fleet = [FakeReplica(i, int(rng.integers(0, 4) * 1000), int(rng.integers(0, 401))) for i in range(n)]
        router = Router(kind)
        router.home = {s: int(rng.integers(0, n)) for s in range(int(rng.integers(0, 6)))}  # other sessions
        want = asking_every_replica(kind, fleet, 6400, router.home)
        slack = rng.integers(0, 3, size=n) * rng.integers(0, 50, size=n)
        most = None if trial % 3 == 0 else [min(r.cached + int(s), len(ids)) for r, s in zip(fleet, slack, strict=True)]
        assert router.pick(fleet, ids, 6400, 16, session=99, most=most) == want
        asked += sum(r.asked for r in fleet)
        total += n
    assert asked < total * 0.7  # caches not asked where their best case could not win


def test_a_replica_is_asked_only_where_its_bound_could_win():
    fleet = [FakeReplica(0, 5000, 380), FakeReplica(1, 0, 10), FakeReplica(2, 0, 10)]
    router = Router("prefix-aware")
    assert router.pick(fleet, np.arange(400), 6400, 16, most=[400, 10, 10]) == 0  # 5,320 tokens of work there
    assert [r.asked for r in fleet] == [1, 0, 0]  # 1 and 2 hold at most 10 blocks: 6,240 tokens at best
    assert router.pick(fleet, np.arange(400), 6400, 16) == 0  # no bound but the prompt's length: all asked
    assert [r.asked for r in fleet] == [2, 1, 1]


def test_lead_in_other_sessions_is_the_prompt_head_that_other_sessions_name():
    b = TraceBuilder(16)
    system = list(range(100, 104))  # an agent's system prompt, sent by two sessions
    s0, s1, s2 = (b.add_session(f"s{k}", scope="shared") for k in range(3))
    b.add_request(s0, 0.0, 16 * 7, 10, np.array([*system, 1, 2, 3]))
    b.add_request(s0, 9.0, 16 * 9, 10, np.array([*system, 1, 2, 3, 4, 5]))  # extends the first: lead carried
    b.add_request(s0, 19.0, 16 * 6, 10, np.array([*system[:2], 200, 201, 7, 8]))  # compacted: reads its new ids
    b.add_request(s1, 0.0, 16 * 5, 10, np.array([*system, 9]))
    b.add_request(s1, 9.0, 16 * 6, 10, np.array([200, 201, 300, 301, 302, 303]))  # 200, 201 also in s0: shared
    b.add_request(s2, 0.0, 16 * 3, 10, np.array([500, 501, 502]))  # its own agent: nothing shared
    trace = b.build()
    lead, origin = trace.lead_in_other_sessions()
    np.testing.assert_array_equal(lead, [4, 4, 4, 4, 2, 0])
    np.testing.assert_array_equal(origin, [0, 0, 2, 3, 4, 5])  # the second request's run is its parent's
    assert trace.lead_in_other_sessions()[0] is lead  # once per trace


@pytest.mark.parametrize("router", ["prefix-aware", "session"])
def test_a_simulation_routes_alike_with_and_without_the_bound(router):
    """The bound (and asking a never-ran replica about the shared lead only) changes which caches are asked, not
    where a request goes: the same replica for every request as when every replica is asked about the full list."""
    trace = generate(GeneratorConfig(sessions=80, seed=11))
    cfg = rung_config(DeploymentSpec(router=router), LADDER[5], ArrivalModel("concurrency", 120.0), 12)
    runs = []
    for bounded in (True, False):
        sim = Simulator(trace, cfg)
        if not bounded:
            sim.lead = None  # no bound: every replica asked, about the prompt's full list
        runs.append(sim.run())
    np.testing.assert_array_equal(runs[0].replica, runs[1].replica)
    np.testing.assert_array_equal(runs[0].cached, runs[1].cached)
    assert len(np.unique(runs[0].replica)) >= 6
