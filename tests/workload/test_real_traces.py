"""The loaders reproduce the figures ../shared/data/README.md gives for each real trace."""

from __future__ import annotations

import numpy as np
import pytest

from agentkv.workload import load_trace
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.stats import trace_stats
from tests.conftest import AZURE_CODE, AZURE_CONV, need


def test_claude_code_figures(claude_code):
    s = trace_stats(claude_code, ArrivalModel("concurrency", 20))
    assert (s.top_level_sessions, s.subagents) == (195, 11)
    assert s.requests == 9_701
    assert s.subagent_requests == 121
    assert s.input_tokens == 1_451_000_375
    assert s.input["p50"] == 114_488
    assert round(s.input["mean"]) == 149_572
    assert s.input["p90"] == 305_748
    assert s.input["max"] == 894_371
    assert round(s.share_over_128k, 3) == 0.396
    assert s.output["p50"] == 237
    assert round(s.output["mean"]) == 417
    assert round(s.hit_rate_per_session, 3) == 0.955
    # ids are session-local, so one shared cache cannot do better than one cache per session
    assert s.hit_rate_global == pytest.approx(s.hit_rate_per_session)


def test_claude_code_subagents_are_linked_sessions(claude_code):
    t = claude_code
    subs = np.flatnonzero(t.session_parent >= 0)
    assert len(subs) == 11
    for s in subs:
        parent = t.session_parent[s]
        assert t.session_names[s].startswith(t.session_names[parent] + "/")
        # a sub-agent starts with a fresh cache: none of its blocks belong to its parent
        mine = np.concatenate([t.blocks(i) for i in np.flatnonzero(t.session == s)])
        theirs = np.concatenate([t.blocks(i) for i in np.flatnonzero(t.session == parent)])
        assert not np.intersect1d(mine, theirs).size


def test_mooncake_figures(mooncake):
    s = trace_stats(mooncake)
    assert s.arrival == "trace timestamps"
    assert s.requests == 12_031
    assert s.input["p50"] == 6_909
    assert s.input["p99"] == 85_401
    assert s.input["max"] == 126_195
    assert round(s.input["mean"], 2) == 12_035.06
    assert s.output["p50"] == 350
    assert round(s.hit_rate_global, 4) == 0.3736


@pytest.mark.parametrize(
    ("path", "rows", "median_in", "max_in", "median_out"),
    [(AZURE_CODE, 8_819, 1_469, 7_437, 13), (AZURE_CONV, 19_366, 1_020, 14_050, 129)],
)
def test_azure_figures(path, rows, median_in, max_in, median_out):
    t = load_trace(str(need(path)))
    s = trace_stats(t)
    assert not t.has_block_ids
    assert s.requests == rows
    assert s.input["p50"] == median_in
    assert s.input["max"] == max_in
    assert s.output["p50"] == median_out
    assert np.isnan(s.hit_rate_global)
    assert s.duration_s == pytest.approx(3_600, rel=0.05)  # one hour of traffic


def test_claude_code_requests_carry_their_model(claude_code, tmp_path):
    """Every request keeps the model it went to (the API prices it by that), through the canonical file too."""
    from agentkv.workload.formats.canonical import save

    names, counts = np.unique(claude_code.model_names(), return_counts=True)
    assert dict(zip(names.tolist(), counts.tolist(), strict=True)) == {
        "claude-opus-4-5-20251101": 5857, "claude-sonnet-4-5-20250929": 3685, "claude-haiku-4-5-20251001": 159}
    save(claude_code, str(tmp_path / "cc.npz"))
    np.testing.assert_array_equal(load_trace(str(tmp_path / "cc.npz")).model_names(), claude_code.model_names())
