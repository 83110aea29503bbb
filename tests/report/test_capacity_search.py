"""The capacity search's probes side by side: the same answer, runs and probe list as one after another, on real
simulations in a real process pool; and the search's decisions as data (which load follows which outcome)."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest

from agentkv.report.capacity import Search, session_capacity
from agentkv.report.ladder import LADDER, DeploymentSpec
from agentkv.workload.generator import GeneratorConfig, LogNormal, WindowClass, generate


def threshold_path(search: Search, limit: float) -> tuple[list[float], tuple]:
    """The search against a replica that meets the SLO up to `limit` sessions."""
    met: dict[float, bool] = {}
    while (c := search.replay(met)[1]) is not None:
        met[c] = c <= limit
    path, _, bracket = search.replay(met)
    return path, bracket


def test_the_search_doubles_then_narrows_and_halves_then_drops_to_one():
    path, bracket = threshold_path(Search(20.0, 4096.0, 5), 100.0)
    assert path == [20.0, 40.0, 80.0, 160.0, pytest.approx(np.sqrt(80 * 160))]
    assert bracket == (80.0, pytest.approx(np.sqrt(80 * 160)))  # 113 missed: capacity 80
    path, bracket = threshold_path(Search(20.0, 4096.0, 5), 3.0)  # met at 1, then narrowed to the fifth probe
    assert path == [20.0, 10.0, 1.0, pytest.approx(10 ** 0.5), pytest.approx(10 ** 0.25)]
    assert bracket == (pytest.approx(10 ** 0.25), pytest.approx(10 ** 0.5))
    assert threshold_path(Search(20.0, 4096.0, 5), 0.5) == ([20.0, 10.0, 1.0], (None, 1.0))
    assert threshold_path(Search(20.0, 64.0, 5), 1e9)[1] == (64.0, None)  # met at the most probed: a lower bound


def test_the_frontier_is_the_next_probe_then_both_guesses_of_its_outcome():
    search = Search(20.0, 4096.0, 5)
    assert search.frontier({}, 1) == [20.0]
    assert search.frontier({}, 3) == [20.0, 40.0, 10.0]
    assert search.frontier({20.0: True}, 3) == [40.0, 80.0, pytest.approx(np.sqrt(20 * 40))]


@pytest.fixture(scope="module")
def small():
    cfg = GeneratorConfig(sessions=6, seed=11, subagent_rate=0.0, turns=LogNormal(8, 0.4),
                          windows=(WindowClass(1.0, 60_000, LogNormal(12_000, 0.4)),))
    return generate(cfg)


def test_probes_side_by_side_give_the_sequential_answer(small):
    spec = DeploymentSpec(slo_ttft_s=5.0, slo_output_tps=0.0, slo_slowdown=0.0)
    one_by_one: dict = {}
    expected = session_capacity(small, spec, LADDER[-1], seed=0, start=6.0, max_sessions=256.0, runs=one_by_one)
    side_by_side: dict = {}
    with ProcessPoolExecutor(2) as pool:
        got = session_capacity(small, spec, LADDER[-1], seed=0, start=6.0, max_sessions=256.0, runs=side_by_side,
                               pool=pool, width=3)
    assert got == expected and len(expected.probes) >= 3
    assert list(side_by_side) == list(one_by_one)  # the guesses that turned out wrong are not kept
    for c, run in one_by_one.items():
        np.testing.assert_array_equal(side_by_side[c].finish, run.finish)
