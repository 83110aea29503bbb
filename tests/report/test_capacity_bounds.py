"""The capacity search's analytic bound, against real simulations: the least busy time the step-cost model allows
is never more than a replica spends, a probe at or above the throughput bound misses the SLO (so the search may
take it as a miss unprobed), and a search the bound brackets takes fewer probes than one without it."""

from __future__ import annotations

import math

import pytest

from agentkv.report.capacity import (
    Search,
    _Probe,
    bounded_search,
    least_busy_seconds,
    session_capacity,
    throughput_bound,
)
from agentkv.report.ladder import LADDER, DeploymentSpec, rung_config
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


@pytest.mark.parametrize("spec", [DeploymentSpec(), TTFT_ONLY], ids=["default SLO", "TTFT only"])
@pytest.mark.parametrize("rung", [0, 2, 5, 7])
def test_a_probe_at_or_above_the_throughput_bound_misses(small, spec, rung):
    bound = throughput_bound(small, spec, LADDER[rung])
    assert math.isfinite(bound)
    for load in (bound, 1.5 * bound):
        res = simulate(small, rung_config(spec, LADDER[rung], ArrivalModel("concurrency", load, 0), 1))
        assert float(res.busy_s.max()) >= res.offered_s  # more work than the window holds, as the bound says
        assert not meets_slo(res, spec)


def test_a_bound_below_the_start_saves_probes_on_real_runs(small):
    spec, rung = TTFT_ONLY, LADDER[0]
    bound = throughput_bound(small, spec, rung)
    start = bound  # where the unbounded search would begin: it cannot double, so its first probe is wasted
    probe = _Probe(small, spec, rung, 0)
    plain = Search(start, 4096.0, 5)
    path, _, _ = plain.replay(plain.run(probe, spec)[1])
    got = session_capacity(small, spec, rung, seed=0, start=start)
    assert len(got.probes) < len(path)
    assert 0 < got.sessions_per_replica < bound


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
