"""The router's bounds (`local_ids.SeenBy`: which replicas have seen a prompt's blocks) only spare it questions:
the simulator routes every request where asking every replica would, so results are equal field for field."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pytest

from agentkv.report.ladder import LADDER, DeploymentSpec, rung_config
from agentkv.sim.local_ids import PAGE, LocalIds, PagedIds, SeenBy
from agentkv.sim.simulator import Simulator
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.generator import GeneratorConfig, generate
from tests.sim.test_same_results import configs
from tests.sim.test_same_results import trace as golden_trace


def test_seen_prefixes_are_each_replicas_leading_run_of_seen_ids():
    rng = np.random.default_rng(3)
    seen_by, local = SeenBy(5), [LocalIds() for _ in range(5)]
    pool = np.concatenate([np.arange(300), np.arange(3 * PAGE, 3 * PAGE + 300)])
    for _ in range(40):  # prompts of a shared head and a random tail, each routed to a random replica
        ids = np.concatenate([pool[: rng.integers(1, 200)], rng.choice(pool[200:], rng.integers(0, 50), replace=False)])
        r = int(rng.integers(5))
        seen_by.mark(PagedIds.of(ids), r)
        local[r].assign(PagedIds.of(ids))
    for _ in range(40):
        prompt = PagedIds.of(pool[: rng.integers(0, len(pool))])
        assert seen_by.prefixes(prompt) == [len(rep.seen_prefix(prompt)) for rep in local]


def test_more_replicas_than_bits_are_refused():
    with pytest.raises(ValueError, match="1 to 64 replicas"):
        SeenBy(65)


@pytest.mark.parametrize("router", ["prefix-aware", "session"])
@pytest.mark.parametrize("tight", [False, True])
def test_bounded_routing_equals_asking_every_replica(router, tight):
    """Roomy caches (a replica's bound is its exact prefix) and tight ones (evictions: a bound can be far above)."""
    if tight:
        cfg = replace(configs()["tight_lfu_session"], router=router, policy="lru")
        trace = golden_trace()
    else:
        cfg = rung_config(DeploymentSpec(router=router), LADDER[5], ArrivalModel("concurrency", 30.0), 5)
        trace = generate(GeneratorConfig(sessions=40, seed=11))
    bounded = Simulator(trace, cfg)
    assert bounded.seen_by is not None
    unbounded = Simulator(trace, cfg)
    unbounded.seen_by = None
    got, want = bounded.run(), unbounded.run()
    assert len(np.unique(got.replica[got.served])) >= 2  # routing had a choice to make
    for f in fields(got):
        if f.name not in ("wall_s", "config"):
            np.testing.assert_array_equal(getattr(got, f.name), getattr(want, f.name), err_msg=f.name)
