"""A replica's own block ids: its policy-core arrays follow the blocks routed to it, not the whole trace's."""

from __future__ import annotations

import numpy as np

from agentkv.report.ladder import LADDER, DeploymentSpec, rung_config
from agentkv.sim.local_ids import PAGE, UNSEEN, LocalIds, PagedIds
from agentkv.sim.simulator import Simulator
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.generator import GeneratorConfig, generate


def test_ids_numbered_in_order_of_first_sight_and_stable():
    local = LocalIds()
    far = np.array([5, 6, 7, 50 * PAGE + 1, 50 * PAGE + 2], dtype=np.int64)
    np.testing.assert_array_equal(local.assign(PagedIds.of(far)), [0, 1, 2, 3, 4])
    again = np.array([5, 6, 9, 7], dtype=np.int64)
    np.testing.assert_array_equal(local.assign(PagedIds.of(again)), [0, 1, 5, 2])
    np.testing.assert_array_equal(local.lookup(PagedIds.of(np.array([9, 8, 50 * PAGE + 2]))), [5, UNSEEN, 4])
    np.testing.assert_array_equal(local.seen_prefix(PagedIds.of(np.array([5, 6, 8, 7]))), [0, 1])  # to the first unseen
    assert len(local.pages) == 2  # only the pages it saw


def test_replicas_hold_arrays_for_their_own_blocks():
    trace = generate(GeneratorConfig(sessions=60, seed=4))
    sim = Simulator(trace, rung_config(DeploymentSpec(router="session"), LADDER[-1], ArrivalModel("concurrency", 60.0), 6))
    res = sim.run()
    assert res.served.sum() > trace.n_requests / 2
    assert sum(rep.ids.n > 0 for rep in sim.replicas) >= 3  # sessions spread over the fleet
    for rep in sim.replicas:  # given the trace's ids, each would size its arrays for ~all of the trace's blocks
        assert rep.cache.n_slots <= max(2 * rep.ids.n, 1024) and rep.cache.n_slots < trace.n_block_ids / 2


def test_extending_a_numbered_prompt_numbers_as_assigning_the_whole_would():
    by_extend, by_assign = LocalIds(), LocalIds()
    first = np.array([5, 6, 7, 50 * PAGE + 1], dtype=np.int64)
    earlier = by_extend.assign(PagedIds.of(first))
    by_assign.assign(PagedIds.of(first))
    new = np.array([50 * PAGE + 2, 9, 7, 3 * PAGE, 10], dtype=np.int64)  # unseen ids beside one seen, two pages
    whole = by_assign.assign(PagedIds.of(np.concatenate([first[:3], new])))
    np.testing.assert_array_equal(by_extend.extend(earlier, 3, PagedIds.of(new)), whole)
    np.testing.assert_array_equal(whole, [0, 1, 2, 4, 5, 2, 6, 7])
    assert by_extend.n == by_assign.n == 8
    np.testing.assert_array_equal(by_extend.extend(earlier, 2, PagedIds.of(new[:0])), [0, 1])  # nothing new: the repeated part
