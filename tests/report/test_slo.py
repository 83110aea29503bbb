"""The SLO a user states (TTFT, output speed, turn time, the agents' pace) and the capacity search it drives, on
small real simulations."""

from __future__ import annotations

import numpy as np
import pytest

from agentkv.report.capacity import Capacity, session_capacity
from agentkv.report.ladder import LADDER, DeploymentSpec, rung_config
from agentkv.report.slo import meets_slo, slo_misses, tpot_limit_ms
from agentkv.sim.simulator import simulate
from agentkv.workload.arrivals import ArrivalModel, place
from agentkv.workload.generator import GeneratorConfig, LogNormal, WindowClass, generate


@pytest.fixture(scope="module")
def small():
    cfg = GeneratorConfig(sessions=6, seed=11, subagent_rate=0.0, turns=LogNormal(8, 0.4),
                          windows=(WindowClass(1.0, 60_000, LogNormal(12_000, 0.4)),))
    return generate(cfg)


@pytest.fixture(scope="module")
def run(small):
    return simulate(small, rung_config(DeploymentSpec(), LADDER[-1], ArrivalModel("concurrency", 6.0), 1))


def test_each_bound_is_checked_at_the_slo_percentile_and_named_when_missed(run):
    tpot_p90_ms = 1e3 * float(np.percentile(run.tpot, 90))
    loose = DeploymentSpec(slo_tpot_ms=1.01 * tpot_p90_ms, slo_slowdown=0.0)
    tight = DeploymentSpec(slo_tpot_ms=0.99 * tpot_p90_ms, slo_slowdown=0.0)
    assert meets_slo(run, loose)
    assert [m.split(" output")[0] for m in slo_misses(run, tight)] == ["p90"]
    # output speed is the same bound stated the other way; slo_tpot_ms, where given, replaces it
    assert tpot_limit_ms(DeploymentSpec(slo_output_tps=50.0)) == pytest.approx(20.0)
    assert tpot_limit_ms(DeploymentSpec(slo_output_tps=50.0, slo_tpot_ms=40.0)) == 40.0
    e2e_p90 = float(np.percentile(run.e2e, 90))
    assert "turn time" in slo_misses(run, DeploymentSpec(slo_e2e_s=0.9 * e2e_p90, slo_output_tps=0, slo_slowdown=0))[0]
    assert meets_slo(run, DeploymentSpec(slo_e2e_s=1.1 * e2e_p90, slo_output_tps=0, slo_slowdown=0))


def test_the_agents_pace_is_their_sessions_length_against_the_recorded_one(small, run):
    """Sessions are closed loops: simulated length = think + turn times, recorded = think + recorded service."""
    placed, _ = place(small, ArrivalModel("concurrency", 6.0))  # sessions cut where they wrap the window
    sim = rec = 0.0
    for s in range(placed.n_sessions):
        i = np.flatnonzero(placed.session == s)
        sim += run.finish[i[-1]] - run.arrival[i[0]]
        rec += placed.time[i[-1]] + placed.api_time[i[-1]] - placed.time[i[0]]
    assert run.slowdown == pytest.approx(sim / rec, rel=1e-6)
    spec = DeploymentSpec(slo_output_tps=0, slo_slowdown=max(1.0, 0.99 * run.slowdown))
    assert meets_slo(run, spec) == (run.slowdown <= spec.slo_slowdown)
    if run.slowdown > 1.0:
        assert "slower than recorded" in slo_misses(run, spec)[0]


def test_a_pace_tolerance_below_one_is_refused_by_name():
    with pytest.raises(ValueError, match=r"slo_slowdown=0.5: must be 0 \(off\) or >= 1"):
        DeploymentSpec(slo_slowdown=0.5)


def test_capacity_search_exceeds_the_traces_own_session_count(small):
    """Past the trace's 6 sessions, placement replays copies of them: the search finds the replica's limit."""
    spec = DeploymentSpec(slo_ttft_s=5.0, slo_output_tps=0.0, slo_slowdown=0.0)
    cap = session_capacity(small, spec, LADDER[-1], seed=0, start=6.0, max_sessions=256.0)
    assert small.n_sessions == 6
    assert cap.sessions_per_replica > 12.0
    loads = [c for c, _ in cap.probes]
    assert max(loads) > cap.sessions_per_replica or cap.at_limit


def test_a_trace_of_single_requests_is_sized_on_its_own_clock_not_packed_into_an_instant():
    """Mooncake-style traffic: every request its own session, with no service time recorded. A concurrency
    cannot place such sessions (their length is 0), so capacity is not probed; the fleet is still sized on the
    trace's own arrivals, where one replica keeps up."""
    from agentkv.catalog import prices
    from agentkv.report.assemble import build_report
    from agentkv.workload.builder import TraceBuilder

    b = TraceBuilder(64)
    for k in range(60):
        s = b.add_session(f"r{k}", start=2.0 * k)
        b.add_request(s, 0.0, 2048, 64, np.arange(32) + 1000 * k)
    rep = build_report(b.build(), DeploymentSpec(slo_slowdown=0.0), ArrivalModel("trace"), prices(), workers=1)
    base = rep.outcomes[0]
    assert base.capacity.undefined and not base.capacity.probes
    assert base.sized.replicas == 1 and base.sized.result is not None
    assert float(np.ptp(base.sized.result.arrival)) == pytest.approx(118.0)  # the trace's own two minutes


def test_an_output_speed_bound_sizes_a_bigger_fleet_and_the_sizing_says_what_binds(small):
    """Where one replica meets TTFT but streams too slowly, the output-speed bound alone sets a larger fleet; the
    size below it is named with the bound it misses (what the headline prints)."""
    from agentkv.report.sizing import size_to_slo

    arrival, rung = ArrivalModel("concurrency", 48.0), LADDER[-1]
    at = {r: simulate(small, rung_config(DeploymentSpec(), rung, arrival, r)) for r in (1, 4)}
    tpot = [1e3 * float(np.percentile(at[r].tpot, 90)) for r in (1, 4)]
    assert tpot[1] < tpot[0], "more replicas must mean smaller decode batches for this test"
    loose = DeploymentSpec(slo_output_tps=0.0, slo_slowdown=0.0)
    tight = DeploymentSpec(slo_tpot_ms=(tpot[0] + tpot[1]) / 2, slo_slowdown=0.0)
    cap = Capacity(48.0, 1.0)
    a = size_to_slo(small, loose, rung, arrival, cap, 48.0, 3.49, {})
    b = size_to_slo(small, tight, rung, arrival, cap, 48.0, 3.49, {})
    assert a.replicas == 1 and b.replicas is not None and 1 < b.replicas <= 4
    assert b.binding and all("output speed" in m for m in b.binding)
