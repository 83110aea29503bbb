"""Arrival models place sessions on one deployment's clock."""

from __future__ import annotations

import numpy as np
import pytest

from agentkv.workload.arrivals import (
    ArrivalModel,
    arrival_times,
    offered_seconds,
    open_sessions,
    root_sessions,
    session_spans,
)
from agentkv.workload.generator import GeneratorConfig, generate


@pytest.fixture(scope="module")
def sessions():
    return generate(GeneratorConfig(sessions=400, with_block_ids=False, human_turn_share=0.0))


def steady_open_sessions(trace, arrivals) -> float:
    """Time-average number of top-level sessions between their first arrival and their end."""
    roots = root_sessions(trace)
    top = np.flatnonzero(roots == np.arange(trace.n_sessions))
    start = np.full(trace.n_sessions, np.inf)
    np.minimum.at(start, roots[trace.session], arrivals)
    spans = session_spans(trace)
    s, e = start[top], start[top] + spans[top]
    horizon = (s.min() + 0.2 * (e.max() - s.min()), s.min() + 0.6 * (e.max() - s.min()))  # steady state
    grid = np.linspace(*horizon, 2000)
    return float(np.mean([(np.sum((s <= g) & (e > g))) for g in grid]))


def test_concurrency_target_is_met(sessions):
    a = arrival_times(sessions, ArrivalModel("concurrency", 20, seed=1))
    assert steady_open_sessions(sessions, a) == pytest.approx(20, rel=0.3)


def test_rate_sets_session_starts_per_second(sessions):
    a = arrival_times(sessions, ArrivalModel("rate", 0.5, seed=2))
    starts = np.sort([a[sessions.session == s].min() for s in np.flatnonzero(sessions.session_parent < 0)])
    assert (len(starts) - 1) / (starts[-1] - starts[0]) == pytest.approx(0.5, rel=0.15)


def test_requests_keep_relative_times_and_subagents_follow_parents(sessions):
    a = arrival_times(sessions, ArrivalModel("concurrency", 10))
    for s in range(sessions.n_sessions):
        mine = sessions.session == s
        base = a[sessions.session == root_sessions(sessions)[s]][0] - sessions.time[sessions.session == root_sessions(sessions)[s]][0]
        np.testing.assert_allclose(a[mine] - base, sessions.time[mine])


def test_trace_clock(mooncake):
    a = arrival_times(mooncake, ArrivalModel("trace"))
    ts = mooncake.session_start[mooncake.session]
    np.testing.assert_allclose(a, ts - ts.min())


def test_trace_clock_needs_one(sessions):
    with pytest.raises(ValueError, match="no session start times"):
        arrival_times(sessions, ArrivalModel("trace"))
    with pytest.raises(ValueError, match="must be > 0"):
        arrival_times(sessions, ArrivalModel("rate", 0))


def test_open_sessions_over_the_offered_window_count_the_ramp_of_a_finite_trace(sessions):
    model = ArrivalModel("concurrency", 20, seed=1)
    a = arrival_times(sessions, model)
    window = offered_seconds(sessions, model, a)
    top = np.flatnonzero(sessions.session_parent < 0)
    s = np.array([a[sessions.session == k].min() - sessions.time[sessions.session == k].min() for k in top])
    e = s + session_spans(sessions)[top]
    grid = np.linspace(0, window, 20_001)
    counts = np.array([np.sum((s <= g) & (e > g)) for g in grid])
    mean, peak = open_sessions(sessions, model)
    assert mean == pytest.approx(counts.mean(), rel=0.01)
    assert counts.max() <= peak <= counts.max() + 1
    assert 12 < mean < 20  # 400 sessions: steady for most of the window, but it starts from none open
    few = generate(GeneratorConfig(sessions=20, with_block_ids=False, human_turn_share=0.0))
    assert open_sessions(few, model)[0] < 0.6 * 20  # 20 sessions offered as 20 concurrent: mostly ramp
