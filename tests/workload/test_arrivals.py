"""Arrival models place sessions on one deployment's clock."""

from __future__ import annotations

import numpy as np
import pytest

from agentkv.workload.arrivals import (
    ArrivalModel,
    arrival_times,
    offered_seconds,
    open_sessions,
    place,
    root_sessions,
    session_spans,
    tokens_per_open_second,
)
from agentkv.workload.generator import GeneratorConfig, generate


@pytest.fixture(scope="module")
def sessions():
    return generate(GeneratorConfig(sessions=400, with_block_ids=False, human_turn_share=0.0))


def unwrapped_starts(trace, arrivals) -> np.ndarray:
    """Each top-level session's start: its first request is placed in the window's first lap, unwrapped."""
    top = np.flatnonzero(trace.session_parent < 0)
    first = trace.session_bounds()[top]
    return arrivals[first] - trace.time[first]


def open_on_grid(trace, model, points: int = 10_000) -> np.ndarray:
    """Sessions open at evenly spaced instants of the offered window, counted from each session's unwrapped
    interval [start, start + span] folded onto the window (open at t + k·window: a copy of it is open at t)."""
    a = arrival_times(trace, model)
    window = offered_seconds(trace, model, a)
    s = unwrapped_starts(trace, a)
    e = s + session_spans(trace)[trace.session_parent < 0]
    grid = np.linspace(0, window, points, endpoint=False)
    laps = np.arange(int(e.max() // window) + 1) * window
    t = grid[:, None, None] + laps[None, :, None]
    return ((s <= t) & (t < e)).sum(axis=(1, 2))


def test_concurrency_target_is_met_from_the_first_second(sessions):
    """Sessions start warm: the window's first tenth holds as many open sessions as the rest."""
    model = ArrivalModel("concurrency", 20, seed=1)
    counts = open_on_grid(sessions, model)
    assert counts.mean() == pytest.approx(20, rel=0.1)
    assert counts[: len(counts) // 10].mean() == pytest.approx(20, rel=0.25)
    mean, peak = open_sessions(sessions, model)
    assert mean == pytest.approx(counts.mean(), rel=0.01)
    assert counts.max() <= peak <= counts.max() + 1
    few = generate(GeneratorConfig(sessions=20, with_block_ids=False, human_turn_share=0.0))
    assert open_sessions(few, model)[0] == pytest.approx(20, rel=0.1)  # 20 sessions offered as 20 concurrent


def test_rate_sets_session_starts_per_second(sessions):
    a = arrival_times(sessions, ArrivalModel("rate", 0.5, seed=2))
    starts = unwrapped_starts(sessions, a)
    assert len(starts) / offered_seconds(sessions, ArrivalModel("rate", 0.5, seed=2), a) == pytest.approx(0.5)
    assert starts.min() >= 0 and (len(starts) - 1) / np.ptp(starts) == pytest.approx(0.5, rel=0.15)


def test_requests_keep_relative_times_and_subagents_follow_parents():
    trace = generate(GeneratorConfig(sessions=30, subagent_rate=0.05))
    assert (trace.session_parent >= 0).any()
    model = ArrivalModel("concurrency", 10)
    placed, a = place(trace, model)
    window = offered_seconds(trace, model, a)
    assert placed.n_sessions > trace.n_sessions  # long sessions wrap around the window
    assert np.all((a >= 0) & (a < window))
    zero = a - placed.time  # one clock per placed session, shared by its sub-agents
    bounds, roots = placed.session_bounds(), root_sessions(placed)
    for s in range(placed.n_sessions):
        mine = zero[bounds[s]:bounds[s + 1]]
        np.testing.assert_allclose(mine, mine[0])
        np.testing.assert_allclose(mine, zero[bounds[roots[s]]])
    # a later lap is another user's copy: it shares the agent's prompt, not the session's own blocks
    np.testing.assert_array_equal(placed.input_tokens, trace.input_tokens)
    segments = [s for s, name in enumerate(placed.session_names) if "@" in name and placed.session_parent[s] < 0]
    assert segments
    every = np.concatenate([trace.blocks(i) for i in range(trace.n_requests)])
    entry_root = np.repeat(root_sessions(trace)[trace.session], trace.blocks_per_request)
    pairs = np.unique(entry_root * trace.n_block_ids + every)  # (session, block) held
    shared = np.flatnonzero(np.bincount(pairs % trace.n_block_ids, minlength=trace.n_block_ids) > 1)
    for s in segments[:10]:
        reqs = range(bounds[s], bounds[s + 1])
        own = np.unique(np.concatenate([trace.blocks(i) for i in reqs]))
        copy = np.unique(np.concatenate([placed.blocks(i) for i in reqs]))
        np.testing.assert_array_equal(np.isin(own, copy), np.isin(own, shared))  # only shared blocks keep ids
        assert np.isin(own, shared).any() and not np.isin(own, shared).all()


def test_trace_clock(mooncake):
    a = arrival_times(mooncake, ArrivalModel("trace"))
    ts = mooncake.session_start[mooncake.session]
    np.testing.assert_allclose(a, ts - ts.min())


def test_trace_clock_needs_one(sessions):
    with pytest.raises(ValueError, match="no session start times"):
        arrival_times(sessions, ArrivalModel("trace"))
    with pytest.raises(ValueError, match="must be > 0"):
        arrival_times(sessions, ArrivalModel("rate", 0))


def test_a_session_left_without_requests_is_not_open():
    """A window fit can reject every request of a session: it offers no load and is never open."""
    from agentkv.workload.builder import TraceBuilder

    b = TraceBuilder(64, has_block_ids=False)
    for k in range(3):
        s = b.add_session(f"s{k}")
        if k != 1:
            for t in range(4):
                b.add_request(s, 60.0 * t, 1000, 10, api_time=5.0)
    mean, peak = open_sessions(b.build(), ArrivalModel("concurrency", 2))
    assert mean == pytest.approx(2.0) and peak >= 2  # the two live sessions, wrapped around the window


def test_tokens_per_open_second_counts_subagents_with_their_session():
    """The load one open session offers: all input tokens over the top-level sessions' open seconds (a
    sub-agent's requests add tokens, not open time of their own)."""
    from agentkv.workload.builder import TraceBuilder

    b = TraceBuilder(64, has_block_ids=False)
    a = b.add_session("a")
    b.add_request(a, 0.0, 1000, 10, api_time=10.0)
    b.add_request(a, 90.0, 2000, 10, api_time=10.0)  # open 0 .. 100 s
    sub = b.add_session("a/sub", parent=a)
    b.add_request(sub, 20.0, 3000, 10, api_time=5.0)
    c = b.add_session("c")
    b.add_request(c, 0.0, 4000, 10, api_time=50.0)  # open 0 .. 50 s
    assert tokens_per_open_second(b.build()) == pytest.approx((1000 + 2000 + 3000 + 4000) / 150.0)
