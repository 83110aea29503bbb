"""The capacity search's analytic bound, against real simulations: the least busy time the step-cost model allows
is never more than a replica spends, a probe at or above the bound it sets on the agents' pace misses the SLO (so
the search and the sizing may take it as a miss unprobed), and a search the bound brackets takes fewer probes
than one without it."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from agentkv.report.capacity import (
    Search,
    _Probe,
    bounded_search,
    least_busy_seconds,
    session_capacity,
    slo_bound,
    throughput_bound,
)
from agentkv.report.ladder import LADDER, DeploymentSpec, rung_config, serve
from agentkv.report.sizing import known_misses, size_to_slo
from agentkv.report.slo import meets_slo
from agentkv.sim.simulator import simulate
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.generator import GeneratorConfig, LogNormal, WindowClass, generate

TTFT_ONLY = DeploymentSpec(slo_ttft_s=5.0, slo_output_tps=0.0, slo_slowdown=0.0)


@pytest.fixture(scope="module")
def small():
    cfg = GeneratorConfig(sessions=6, seed=11, subagent_rate=0.0, turns=LogNormal(8, 0.4),
                          windows=(WindowClass(1.0, 60_000, LogNormal(12_000, 0.4)),))
    return generate(cfg)


@pytest.mark.parametrize("rung", [0, 2, 5, 7])
def test_no_run_is_busy_for_less_than_the_least_busy_seconds(small, rung):
    spec = DeploymentSpec()
    cfg = rung_config(spec, LADDER[rung], ArrivalModel("concurrency", 3.0, 0), 1)
    least = least_busy_seconds(small, rung_config(spec, LADDER[rung], ArrivalModel(), 1).deployment,
                               spec.max_batched_tokens, LADDER[rung].prefix_cache)
    assert 0 < least <= float(simulate(small, cfg).busy_s.sum())


@pytest.mark.parametrize("rung", [0, 2, 5, 7])
def test_a_probe_at_or_above_the_pace_bound_misses(small, rung):
    spec = DeploymentSpec()
    bound = slo_bound(small, spec, LADDER[rung])
    assert bound == pytest.approx(spec.slo_slowdown * throughput_bound(small, spec, LADDER[rung]))
    for load in (bound, 1.5 * bound):
        res = simulate(small, rung_config(spec, LADDER[rung], ArrivalModel("concurrency", load, 0), 1))
        assert res.slowdown > spec.slo_slowdown  # the part of the SLO the bound speaks for
        assert not meets_slo(res, spec)


def test_an_slo_that_does_not_bound_the_pace_has_no_known_miss(small):
    assert slo_bound(small, TTFT_ONLY, LADDER[0]) == math.inf
    assert known_misses(small, TTFT_ONLY, LADDER[0], ArrivalModel("concurrency", 1e6, 0)) == 0


@pytest.mark.parametrize("rung", [0, 2])
def test_fleets_below_the_pace_bound_miss(small, rung):
    spec = DeploymentSpec()
    arrival = ArrivalModel("concurrency", 3.3 * slo_bound(small, spec, LADDER[rung]), 0)
    known = known_misses(small, spec, LADDER[rung], arrival)
    assert known == 3
    for replicas in range(1, known + 1):
        assert not meets_slo(serve(small, spec, LADDER[rung], arrival, replicas), spec)


def test_a_bound_below_the_start_saves_probes_on_real_runs(small):
    spec, rung = DeploymentSpec(), LADDER[0]
    start = slo_bound(small, spec, rung)  # where the plain search would begin: a known miss, then it halves
    probe = _Probe(small, spec, rung, 0)
    plain = Search(start, 4096.0, 5)
    path, _, _ = plain.replay(plain.run(probe, spec)[1])
    got = session_capacity(small, spec, rung, seed=0, start=start)
    assert len(got.probes) < len(path)
    assert 0 < got.sessions_per_replica < start


def test_the_bound_closes_the_bracket_from_above_unprobed():
    search = bounded_search(20.0, 4096.0, 5, known_miss=30.0)  # no room to double 20: start mid-way in log
    assert search.first == pytest.approx(math.sqrt(30.0))
    met: dict[float, bool] = {}
    while (c := search.replay(met)[1]) is not None:
        assert c < 30.0
        met[c] = True  # a replica that meets it at every load probed
    path, _, bracket = search.replay(met)
    assert bracket == (pytest.approx(4 * math.sqrt(30.0)), 30.0)  # 8√30 would pass the bound: 30 closes it
    assert len(path) == 3  # √30, 2√30, 4√30; without the bound it doubles on to 4,096
    assert bounded_search(20.0, 4096.0, 5, known_miss=400.0).first == 20.0  # room to double: the caller's start


def test_a_chunk_budget_whose_prefill_floor_misses_is_not_sized(small):
    """A remedy's smaller chunk budget can put the SLO-percentile prompt's lone prefill past the TTFT bound: no
    fleet meets it (checked on one run), so sizing says so without a simulation."""
    spec = DeploymentSpec(slo_ttft_s=1.0, max_batched_tokens=512)
    cap = session_capacity(small, replace(spec, max_batched_tokens=8192, slo_ttft_s=60.0), LADDER[0], seed=0)
    assert cap.sessions_per_replica > 0
    runs: dict = {}
    arrival = ArrivalModel("concurrency", 2.0, 0)
    sized = size_to_slo(small, spec, LADDER[0], arrival, cap, 2.0, 3.0, runs)
    assert sized.replicas is None and not runs and "to prefill on an idle GPU" in sized.reason
    assert not meets_slo(serve(small, spec, LADDER[0], arrival, 8), spec)
