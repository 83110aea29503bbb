"""The `agentkv` command, run as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import MOONCAKE, need


def agentkv(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentkv.cli", *args], capture_output=True, text=True, timeout=300)


def test_trace_stats_json_on_a_real_trace():
    r = agentkv("trace", "stats", str(need(MOONCAKE)), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["input"]["p99"] == 85_401 and s["requests"] == 12_031


def test_default_main_job_runs_on_the_generated_workload():
    r = agentkv("trace", "stats", "--gen-sessions", "30")
    assert r.returncode == 0, r.stderr
    assert "trace stats: generator" in r.stdout and "share of requests over 128k" in r.stdout


def test_generate_then_read_back(tmp_path):
    out = tmp_path / "g.npz"
    r = agentkv("trace", "generate", "--sessions", "12", "--seed", "5", "--out", str(out),
                "--config-out", str(tmp_path / "g.json"))
    assert r.returncode == 0, r.stderr
    s = json.loads(agentkv("trace", "stats", str(out), "--json").stdout)
    assert s["top_level_sessions"] == 12
    again = agentkv("trace", "stats", "--gen-config", str(tmp_path / "g.json"), "--gen-seed", "5", "--json")
    assert json.loads(again.stdout)["input_tokens"] == s["input_tokens"]


def test_bad_input_exits_2_naming_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]}\n{"timestamp": 1}\n')
    r = agentkv("trace", "stats", str(bad))
    assert r.returncode == 2
    assert f"{bad}:line 2: field 'input_length': missing" in r.stderr
    r = agentkv("trace", "stats", str(bad), "--skip-bad")
    assert r.returncode == 0 and "skipped 1 bad records" in r.stdout
