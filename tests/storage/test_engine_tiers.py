"""The engine over disk and Redis tiers (a real redis-server): greedy outputs equal to a run without any cache
through demotions and promotions, corrupted records, a restart, a second engine process and a Redis outage."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest
import redis
import torch

from agentkv.engine.llm import LLM
from agentkv.engine.sequence import SamplingParams
from tests.engine.conftest import prompts, write_checkpoint

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
GPU_PAGES = 24  # a pool too small to keep every prompt: blocks go down to the lower tiers and come back


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("tiers-llama3"), "llama3", seed=2)


@pytest.fixture(scope="module")
def cases(model_dir):
    ps = prompts(6, seed=5, lo=40, hi=90)
    ps.append([*ps[0][:48], 3, 4, 5])  # shares 48 tokens with prompt 0
    plain = LLM(str(model_dir), dtype="float32", block_size=8, enable_prefix_caching=False)
    return ps, [o.outputs[0].token_ids for o in plain.generate(ps, GREEDY)]


def engine(model_dir, tiers: str) -> LLM:
    probe = LLM(str(model_dir), dtype="float32", block_size=8, kv_cache_bytes=2**20)
    return LLM(str(model_dir), dtype="float32", block_size=8, check_invariants=True,
               kv_cache_bytes=probe.layout.page_bytes * GPU_PAGES, kv_tiers=tiers)


def run_twice(llm: LLM, ps: list[list[int]]) -> tuple[list[list[int]], dict[str, int]]:
    """All prompts, then each again alone: (the second pass's outputs, its cached tokens per tier)."""
    llm.generate(ps, GREEDY)
    again = [llm.generate([p], GREEDY)[0] for p in ps]
    hits = {t: sum(o.cached_tokens_per_tier.get(t, 0) for o in again) for t in llm.tier_names}
    return [o.outputs[0].token_ids for o in again], hits


def test_dram_disk_redis_round_trip(model_dir, cases, tmp_path, redis_server):
    ps, expected = cases
    llm = engine(model_dir, f"dram=16k,disk=1MiB@{tmp_path},redis=1MiB@{redis_server.url}")
    assert llm.tier_names == ["gpu", "dram", "disk", "remote"]
    out, hits = run_twice(llm, ps)
    assert out == expected
    assert hits["dram"] > 0
    llm.close()


def test_corrupted_disk_and_redis_records_are_recomputed(model_dir, cases, tmp_path, redis_server, caplog):
    ps, expected = cases
    llm = engine(model_dir, f"disk=1MiB@{tmp_path}")
    llm.generate(ps, GREEDY)
    llm.tiering.mover.close()  # offloads done: now damage every record on disk
    for seg in tmp_path.glob("seg*.kv"):
        data = bytearray(seg.read_bytes())
        data[2000::4096] = bytes(b ^ 0x5A for b in data[2000::4096])
        seg.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        out = [llm.generate([p], GREEDY)[0] for p in ps]
    assert [o.outputs[0].token_ids for o in out] == expected
    assert "lost" in caplog.text and "failed verification" in caplog.text

    shared = engine(model_dir, f"redis=1MiB@{redis_server.url}")
    shared.generate(ps, GREEDY)
    shared.tiering.mover.close()
    raw = redis.Redis.from_url(redis_server.url)
    for name in raw.keys("akv:*"):
        page = raw.hget(name, b"p")
        raw.hset(name, b"p", page[:-3] if len(name) % 2 else page[:100] + b"\xff" + page[101:])
    fresh = engine(model_dir, f"redis=1MiB@{redis_server.url}")  # adopts the damaged blocks, then misses them
    out = [fresh.generate([p], GREEDY)[0] for p in ps]
    assert [o.outputs[0].token_ids for o in out] == expected
    assert sum(o.cached_tokens_per_tier["remote"] for o in out[:6]) == 0  # prompt 6 may hit prompt 0's rewrite


def test_disk_tier_survives_a_restart(model_dir, cases, tmp_path):
    ps, expected = cases
    first = engine(model_dir, f"disk=1MiB@{tmp_path}")
    first.generate(ps, GREEDY)
    first.close()
    second = engine(model_dir, f"disk=1MiB@{tmp_path}")
    out = [second.generate([p], GREEDY)[0] for p in ps]
    assert [o.outputs[0].token_ids for o in out] == expected
    assert sum(o.cached_tokens_per_tier["disk"] for o in out) > 0


def test_two_processes_share_redis_tenants_do_not(model_dir, cases, redis_server):
    ps, expected = cases
    script = textwrap.dedent(f"""
        from agentkv.engine.llm import LLM
        from agentkv.engine.sequence import SamplingParams
        llm = LLM({str(model_dir)!r}, dtype="float32", block_size=8, kv_tiers="redis=1MiB@{redis_server.url}")
        llm.generate({ps[0]!r}, SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
        llm.close()
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    llm = engine(model_dir, f"redis=1MiB@{redis_server.url}")
    other_tenant = llm.generate([{"prompt_token_ids": ps[0]}], GREEDY)  # noqa: F841 (warms nothing shared)
    rid = llm.add_request(ps[0], GREEDY, tenant="b")
    outs = []
    while llm.has_unfinished_requests():
        outs += [o for o in llm.step() if o.finished]
    assert outs[0].cached_tokens_per_tier["remote"] == 0 and outs[0].request_id == rid
    assert outs[0].outputs[0].token_ids == expected[0]
    shared = engine(model_dir, f"redis=1MiB@{redis_server.url}").generate([ps[6]], GREEDY)[0]
    assert shared.cached_tokens_per_tier["remote"] == 48  # computed by the other process
    assert shared.outputs[0].token_ids == expected[6]


def test_redis_killed_mid_run_then_restarted(model_dir, cases, redis_server):
    ps, expected = cases
    llm = engine(model_dir, f"redis=1MiB@{redis_server.url}")
    llm.tiering.shared.store.backoff_s = (0.05, 0.1)
    assert [o.outputs[0].token_ids for o in llm.generate(ps[:3], GREEDY)] == expected[:3]
    redis_server.kill()
    assert [o.outputs[0].token_ids for o in llm.generate(ps, GREEDY)] == expected
    assert not llm.tiering.shared.store.up
    redis_server.start()
    torch.manual_seed(0)
    later = engine(model_dir, f"redis=1MiB@{redis_server.url}")
    later.generate(ps[:1], GREEDY)
    llm.tiering.mover.close()
    later.tiering.mover.close()
    again = engine(model_dir, f"redis=1MiB@{redis_server.url}").generate([ps[6]], GREEDY)[0]
    assert again.cached_tokens_per_tier["remote"] == 48 and again.outputs[0].token_ids == expected[6]
