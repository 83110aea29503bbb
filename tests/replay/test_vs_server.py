"""`agentkv replay` against `agentkv serve` on real claude-code sessions: the cached-token share the server
reports is what the policy core predicts for the same requests, and what `agentkv cache sweep` predicts."""

from __future__ import annotations

import csv
import json

import pytest

from agentkv.cli import main
from tests.conftest import CLAUDE_CODE, need
from tests.engine.conftest import write_checkpoint
from tests.server.conftest import LiveServer

SESSIONS = ("trace_0002", "trace_0011", "trace_0014")  # contexts of 15k-35k tokens over their first turns
BLOCK = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = write_checkpoint(tmp_path_factory.mktemp("replay-ckpt"), "llama3", seed=5)
    # 91 pages of 16 tokens: less than the three sessions' contexts together, so LRU evicts as they interleave
    server = LiveServer(["--model", str(folder), "--served-model-name", "tiny", "--kv-cache-gb", "0.0007",
                         "--block-size", str(BLOCK), "--policy", "lru"])
    yield folder, server
    server.stop()


@pytest.fixture
def tiered(tiny):
    """The same model and GPU pages over a 128-block DRAM tier (the policy core moves blocks down and back); a
    fresh server per test, as the prediction starts from an empty cache on every tier."""
    server = LiveServer(["--model", str(tiny[0]), "--served-model-name", "tiny", "--kv-cache-gb", "0.0007",
                         "--block-size", str(BLOCK), "--policy", "lru", "--kv-tiers", "dram=1MiB"])
    yield tiny[0], server
    server.stop()


def replay(tmp_path, tiny, *flags: str) -> dict:
    """One replay; give each test its own --seed: its text then shares nothing with what earlier tests left in
    the server's cache (older blocks LRU evicts first, so they change no hit)."""
    folder, server = tiny
    files = [str(need(CLAUDE_CODE / f"{s}.json.gz")) for s in SESSIONS]
    out = tmp_path / "out"
    rc = main(["replay", *files, "--endpoint", server.url, "--tokenizer", str(folder), "--token-scale", "0.03125",
               "--time-scale", "0", "--max-turns", "6", "--max-tokens", "8", "--concurrency", "3",
               "--max-inflight", "1", "--predict", "lru", "--out", str(out), "--json", *flags])
    assert rc == 0
    return json.loads((out / "summary.json").read_text())


def test_measured_cached_share_matches_the_prediction_and_the_sweep(tmp_path, tiny, capsys):
    s = replay(tmp_path, tiny)
    assert s["requests"] == s["ok"] == 18 and not s["errors"]
    assert s["count_mismatches"] == 0  # the server counted every prompt as planned: block boundaries held
    assert s["prediction"] == f"lru, gpu 91 blocks of {BLOCK}"  # capacity read from the server's /metrics
    measured = s["cached_share"]
    assert 0.1 < measured < 0.9
    assert s["predicted_share"] == measured  # one request at a time on raw completions: exact, as the README says
    rows = list(csv.DictReader((tmp_path / "out" / "requests.csv").open()))
    missed = [(r["cached_tokens"], r["predicted_cached"]) for r in rows if r["cached_tokens"] != r["predicted_cached"]]
    assert not missed, f"{len(missed)}/{len(rows)} requests not predicted to the token: {missed}"

    capsys.readouterr()
    sweep = tmp_path / "sweep"
    assert main(["cache", "sweep", str(tmp_path / "out" / "as_served.npz"), "--trace-clock", "--policy", "lru",
                 "--capacity", str(91 * BLOCK), "--out", str(sweep), "--json"]) == 0
    points = {p["policy"]: p["hit_rate"] for p in json.loads(capsys.readouterr().out)["points"]}
    assert abs(points["lru"] - measured) <= 0.02
    assert points["belady"] > measured + 0.05  # the capacity binds: the agreement is not the trivial kind


@pytest.mark.parametrize("api", ["anthropic", "openai-chat"])
def test_chat_apis_through_the_chat_template(tmp_path, tiny, api):
    s = replay(tmp_path, tiny, "--api", api, "--sessions", "2", "--seed", str(1 + len(api)))
    assert s["requests"] == s["ok"] == 12 and s["count_mismatches"] == 0
    assert s["meta"]["server_overhead_tokens"] > 1  # the chat template's header and footer
    assert s["cached_share"] > 0.3 and abs(s["cached_share"] - s["predicted_share"]) <= 0.02


# 1155355465: the tiny model's reply to trace_0002's first turn completes a block with the very token the next
# turn's prompt has there, so the server hits that block; predicted only since replies' token ids are read
@pytest.mark.parametrize("seed", [None, 1155355465])
def test_a_dram_tier_serves_what_the_prediction_says_per_tier(tmp_path, tiered, seed):
    s = replay(tmp_path, tiered, *(["--seed", str(seed)] if seed else []))
    assert s["requests"] == s["ok"] == 18 and not s["errors"]
    assert s["prediction"] == f"lru, gpu 91 + dram 128 blocks of {BLOCK}"  # tiers and sizes read from /metrics
    assert s["cached_per_tier"]["dram"] > s["cached_per_tier"]["gpu"] > 0  # most hits came back from DRAM ...
    assert s["cached_per_tier"] == s["predicted_per_tier"]  # ... each one where the policy core put it
    rows = list(csv.DictReader((tmp_path / "out" / "requests.csv").open()))
    nonzero = lambda cell: {k: v for k, v in json.loads(cell or "{}").items() if v}  # noqa: E731
    assert all(nonzero(r["cached_per_tier"]) == nonzero(r["predicted_per_tier"]) for r in rows)
