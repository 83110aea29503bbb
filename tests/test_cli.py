"""The `agentkv` command, run as a user runs it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

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


def test_cache_sweep_writes_table_csv_json_png(tmp_path):
    out = tmp_path / "sw"
    r = agentkv("cache", "sweep", "--gen-sessions", "15", "--capacity", "64k,256k", "--policy", "lru,agent",
                "--tiers", "dram=4x", "--concurrency", "5", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "infinite cache" in r.stdout
    assert "agent @ 64k: recomputes" in r.stdout and "vs LRU" in r.stdout  # tiered: no Belady bound to close
    rows = list(csv.DictReader((out / "sweep.csv").read_text().splitlines()))
    assert {row["policy"] for row in rows} == {"lru", "agent", "belady"}
    assert len(rows) == 6
    for row in rows:
        total = float(row["hit_rate"])
        assert total == pytest.approx(float(row["hit_rate_gpu"]) + float(row["hit_rate_dram"]), abs=1e-5)
    doc = json.loads((out / "sweep.json").read_text())
    assert 0 < doc["infinite_hit_rate"] <= 1 and doc["tiers"] == "dram=4x"
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_gpu_only_cache_sweep_reports_the_belady_gap(tmp_path):
    r = agentkv("cache", "sweep", "--gen-sessions", "10", "--capacity", "64k", "--policy", "lru,agent",
                "--concurrency", "5", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "agent @ 64k: closes" in r.stdout and "of the LRU→Belady gap" in r.stdout


def test_cache_sweep_rejects_bad_input(tmp_path):
    r = agentkv("cache", "sweep", "--gen-sessions", "3", "--tiers", "hbm=2x", "--out", str(tmp_path))
    assert r.returncode == 2 and "unknown lower tier 'hbm'" in r.stderr
    r = agentkv("cache", "sweep", "--gen-sessions", "3", "--capacity", "lots", "--out", str(tmp_path))
    assert r.returncode == 2 and "bad capacity 'lots'" in r.stderr
    csv_trace = tmp_path / "a.csv"
    csv_trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.9,100,3\n")
    r = agentkv("cache", "sweep", str(csv_trace), "--out", str(tmp_path))
    assert r.returncode == 2 and "no block ids" in r.stderr


def test_report_ladder_end_to_end(tmp_path):
    out = tmp_path / "r.html"
    r = agentkv("report", "--gen-sessions", "8", "--workers", "1", "--concurrency", "4", "--out", str(out),
                "--deployment", "hardware=h100-sxm,slo_ttft_s=30")
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    ladder = {row["lever"]: row for row in doc["ladder"]}
    assert list(ladder) == ["baseline", "+IO-aware attention", "+prefix cache (HBM)", "+fp8 KV", "+int4 KV",
                            "+DRAM tier", "+disk tier", "+agent-aware policy"]
    assert ladder["baseline"]["hit_rate"] == 0 and ladder["+IO-aware attention"]["hit_rate"] == 0
    assert ladder["+prefix cache (HBM)"]["hit_rate"] > 0.5
    assert ladder["+IO-aware attention"]["ttft_p50_s"] < ladder["baseline"]["ttft_p50_s"]
    assert ladder["+int4 KV"]["gpus"] <= ladder["baseline"]["gpus"]
    assert {p["name"] for p in doc["providers"]} >= {"anthropic", "openai", "deepseek"}
    assert all(0 < p["saving"] < 1 for p in doc["providers"])
    html = out.read_text()
    assert "mitigation ladder" in html and "report_files" not in html.split("<img")[0]
    pngs = list((tmp_path / "r_files").glob("*.png"))
    assert len(pngs) == 4 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert "API: openai" in r.stdout


def test_report_rejects_bad_deployment(tmp_path):
    r = agentkv("report", "--gen-sessions", "2", "--deployment", "gpu=h100", "--out", str(tmp_path / "x.html"))
    assert r.returncode == 2 and "unknown setting 'gpu'" in r.stderr
    r = agentkv("report", "--gen-sessions", "2", "--deployment", "hardware=tpu9", "--out", str(tmp_path / "x.html"))
    assert r.returncode == 2 and "unknown hardware 'tpu9'" in r.stderr
