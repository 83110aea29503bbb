"""Each session keeps its think times (scaled), sessions run --concurrency at a time, requests --max-inflight."""

from __future__ import annotations

import csv
import itertools

from agentkv.cli import main
from tests.replay.conftest import write_trace
from tests.replay.stub import Stub

FAST = ["--token-scale", "0.125", "--max-tokens", "2", "--json"]


def rows(out) -> list[dict[str, str]]:
    return sorted(csv.DictReader((out / "requests.csv").open()), key=lambda r: float(r["sent_s"]))


def test_think_times_are_kept_scaled(tmp_path, capsys):
    trace = write_trace(tmp_path / "trace", sessions=1, turns=4)  # every turn thinks 1 s first
    with Stub(("ok",)) as stub:
        assert main(["replay", str(trace), "--endpoint", stub.url, "--time-scale", "0.3", *FAST,
                     "--out", str(tmp_path / "o")]) == 0
    r = rows(tmp_path / "o")
    for a, b in itertools.pairwise(r):
        gap = float(b["sent_s"]) - float(a["sent_s"]) - float(a["e2e_s"])
        assert 0.28 <= gap < 0.8, gap  # 1 s × 0.3 after the previous reply ended


def test_concurrency_and_inflight_bounds(tmp_path, capsys):
    trace = write_trace(tmp_path / "trace", sessions=6, turns=3)
    with Stub(("ok",), delay=0.15) as stub:
        assert main(["replay", str(trace), "--endpoint", stub.url, "--time-scale", "0", "--concurrency", "2", *FAST,
                     "--out", str(tmp_path / "a")]) == 0
        by_sessions = stub.most_active
        stub.most_active = 0
        assert main(["replay", str(trace), "--endpoint", stub.url, "--time-scale", "0", "--concurrency", "6",
                     "--max-inflight", "3", *FAST, "--out", str(tmp_path / "b")]) == 0
        by_inflight = stub.most_active
    assert by_sessions == 2 and by_inflight == 3  # a session has one request out at a time
    first = {}
    for r in rows(tmp_path / "a"):
        first.setdefault(r["session"], float(r["sent_s"]))
    starts = sorted(first.values())
    assert starts[2] > starts[1] + 0.3  # the third session waited for one of the first two to finish
