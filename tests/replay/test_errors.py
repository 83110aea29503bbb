"""Against a server that misbehaves every way it can, the replay counts each failure by kind and carries on."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from agentkv.cli import main
from tests.replay.conftest import write_trace
from tests.replay.stub import EXPECTED, Stub

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--time-scale", "0", "--token-scale", "0.125", "--max-tokens", "4"]


def test_every_error_is_counted_by_kind(tmp_path, capsys):
    trace = write_trace(tmp_path / "trace", sessions=4, turns=5)
    out = tmp_path / "out"
    with Stub(stall=60) as stub:  # the stalled handler thread is a daemon: nobody waits for it
        rc = main(["replay", str(trace), "--endpoint", stub.url, *FAST, "--timeout", "2", "--max-inflight", "4",
                   "--predict", "lru", "--capacity", "4096", "--out", str(out), "--json"])
    assert rc == 1  # requests failed: the run says so in its status
    assert len(stub.served) == 20  # every request reached the server once: none was lost or repeated
    want = Counter(EXPECTED[b] for b in stub.served)
    summary = json.loads((out / "summary.json").read_text())
    assert json.loads(capsys.readouterr().out)["errors"] == summary["errors"]
    assert summary["errors"] == {k: v for k, v in sorted(want.items()) if k}
    assert summary["requests"] == 20 and summary["ok"] == want[""] == 4
    rows = list(csv.DictReader((out / "requests.csv").open()))
    assert Counter(r["error"] for r in rows) == want
    whole = [r for r in rows if not r["error"]]
    assert all(int(r["prompt_tokens"]) == int(r["prompt_planned"]) for r in whole)  # the stub counts words + BOS
    assert summary["count_mismatches"] == 0
    assert all(int(r["predicted_cached"]) >= 0 for r in whole) and all(r["predicted_cached"] == "-1" for r in rows
                                                                        if r["error"])  # whole replies only
    assert (out / "as_served.npz").exists() and summary["predicted_cached_tokens"] >= 0
    assert (out / "ttft_over_time.png").stat().st_size > 0 and (out / "cached_share_per_session.png").exists()


def test_calibrates_from_usage_without_a_tokenize_endpoint(tmp_path):
    trace = write_trace(tmp_path / "trace", sessions=1, turns=3)
    with Stub(("ok",), tokenize=False) as stub:
        rc = main(["replay", str(trace), "--endpoint", stub.url + "/v1", *FAST, "--out", str(tmp_path / "o"), "--json"])
    assert rc == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["ok"] == 3 and summary["meta"]["server_overhead_tokens"] == 1


def test_a_tokenizer_that_merges_words_is_refused(tmp_path, capsys):
    trace = write_trace(tmp_path / "trace", sessions=1, turns=2)
    with Stub(("ok",), unknown_words=True) as stub:
        rc = main(["replay", str(trace), "--endpoint", stub.url, *FAST, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "distinct tokens" in err and "--tokenizer" in err
    assert stub.served == []  # refused before any replayed request


def test_unreachable_server_is_one_line_exit_2(tmp_path, capsys):
    trace = write_trace(tmp_path / "trace", sessions=1, turns=2)
    with Stub() as stub:
        url = stub.url
    rc = main(["replay", str(trace), "--endpoint", url, "--model", "m", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("agentkv: error: ") and "connect" in err and err.count("\n") == 1


def test_bad_flags_exit_2(tmp_path, capsys):
    trace = write_trace(tmp_path / "trace", sessions=1, turns=2)
    for flags in (["--token-scale", "0"], ["--token-scale", "1.5"], ["--max-inflight", "0"], ["--predict", "lru"],
                  ["--predict", "lru", "--capacity", "4GiB"], ["--predict", "belady"], ["--extra-body", "[1]"], ["--extra-body", "{x"]):
        rc = main(["replay", str(trace), "--endpoint", "http://127.0.0.1:9", *flags])
        assert rc == 2, flags
        assert capsys.readouterr().err.startswith("agentkv: error: ")


def test_ctrl_c_stops_and_writes_what_finished(tmp_path):
    trace = write_trace(tmp_path / "trace", sessions=4, turns=10)
    out = tmp_path / "out"
    with Stub(("ok",), delay=0.2) as stub:
        proc = subprocess.Popen([sys.executable, "-u", "-m", "agentkv.cli", "replay", str(trace), "--endpoint", stub.url,
                                 *FAST, "--max-inflight", "2", "--out", str(out)],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "COLUMNS": "140"})
        assert proc.stdout.readline().startswith("endpoint: ")  # checked first
        assert proc.stdout.readline().startswith("replay: 40 requests")  # calibrated, replay under way
        deadline = time.monotonic() + 60
        while len(stub.served) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "stopping" in stderr and "Traceback" not in stderr
    assert "cached-token share" in stdout  # the summary of what finished
    rows = list(csv.DictReader((out / "requests.csv").open()))
    done = [r for r in rows if not r["error"]]
    assert 1 <= len(done) < 40
    assert {r["error"] for r in rows} <= {"", "cancelled"}
    assert json.loads((out / "summary.json").read_text())["ok"] == len(done)
