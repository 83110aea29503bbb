"""A sub-agent starts after the parent turn that spawned it, the trace's gap capped at --max-think like any
think time, and the time estimate counts that wait: a sub-agent days into its session (as in the real
claude-code trace_0004, 440,243 s) must not hold a replay for hours. Requests never sent are in the summary,
and a replay whose output is a log says, every so often, what it is waiting for."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from agentkv.cli import main
from agentkv.commands import replay as replay_cli
from agentkv.replay.runner import Pacing, plan
from agentkv.workload.load import load_trace
from tests.replay.stub import Stub

LATE = 440_000.0  # seconds into the session the sub-agent starts


def request(t: float, ids: list[int], think: float) -> dict:
    return {"t": t, "type": "n", "in": 64 * len(ids), "out": 8, "hash_ids": ids, "api_time": 1.0,
            "think_time": think}


@pytest.fixture
def late_sub_agent(tmp_path) -> Path:
    """A parent with turns at 0, 2 s and LATE + 10 s; its sub-agent starts at LATE, turns 3 s apart."""
    sub = {"t": LATE, "type": "subagent", "agent_id": "a1",
           "requests": [request(0.0, [100, 101], float("nan")), request(3.0, [100, 101, 102], 1.0)]}
    doc = {"id": "s0", "block_size": 64, "hash_id_scope": "local",
           "requests": [request(0.0, [0, 1], 0.0), request(2.0, [0, 1, 2], 1.0), sub,
                        request(LATE + 10, [0, 1, 2, 3], 1.0)]}
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(doc).replace("NaN", "null"))
    return path


def test_the_estimate_counts_the_wait_before_a_sub_agent(late_sub_agent):
    trace = load_trace([str(late_sub_agent)])
    p = plan(trace)
    assert [len(t) for t in p.groups[0]] == [3, 2]
    # the parent's turn at 2 s spawned it: 0.1 s (its think) + (LATE - 2 - 1 s api) × 0.1, then 3 - 1 s × 0.1
    uncapped = p.think_floor(trace, Pacing(time_scale=0.1))
    assert uncapped == pytest.approx(0.1 + (LATE - 3) * 0.1 + 0.1)
    assert p.think_floor(trace, Pacing(time_scale=0.1, max_think=0.2)) == pytest.approx(0.1 + 0.2 + 0.1)


def test_max_think_caps_the_wait_before_a_sub_agents_first_turn(late_sub_agent, tmp_path, capsys):
    out = tmp_path / "o"
    with Stub(("ok",)) as s:
        assert main(["replay", str(late_sub_agent), "--endpoint", s.url, "--time-scale", "0.1", "--max-think",
                     "0.2", "--max-tokens", "2", "--out", str(out)]) == 0
    assert "think time alone takes at least 0 s" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"] == summary["planned"] == 5 and summary["not_sent"] == 0
    assert summary["duration_s"] < 5
    rows = {(r["session"], r["turn"]): r for r in csv.DictReader((out / "requests.csv").open())}
    spawner = rows[("s0", "1")]
    first = rows[("s0/a1", "0")]
    assert float(first["sent_s"]) >= float(spawner["sent_s"]) + float(spawner["e2e_s"]) + 0.2 - 0.01


def test_requests_never_sent_are_counted(tmp_path, capsys):
    from tests.replay.conftest import write_trace

    trace = write_trace(tmp_path / "trace", sessions=4, turns=10)
    with Stub(("500",)) as s:
        rc = main(["replay", str(trace), "--endpoint", s.url, "--time-scale", "0", "--max-tokens", "2",
                   "--max-errors", "5", "--concurrency", "1", "--out", str(tmp_path / "o")])
    assert rc == 1
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert (summary["planned"], summary["requests"], summary["not_sent"]) == (40, 5, 35)
    out = capsys.readouterr().out
    assert "0 / 5 / 40" in out and "requests never sent" in out


def test_a_replay_logged_to_a_file_says_what_it_waits_for(tmp_path, capsys, monkeypatch):
    from tests.replay.conftest import write_trace

    monkeypatch.setattr(replay_cli._Progress, "PERIOD", 0.3)  # a line every 0.3 s instead of every 30 s
    trace = write_trace(tmp_path / "trace", sessions=1, turns=3)  # every turn thinks 1 s first
    with Stub(("ok",)) as s:
        assert main(["replay", str(trace), "--endpoint", s.url, "--token-scale", "0.1", "--max-tokens", "2",
                     "--out", str(tmp_path / "o")]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("replay: ok ")]
    assert lines and any("waiting on think time, the next in" in x for x in lines), lines
