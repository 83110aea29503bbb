"""The engine over disk and Redis tiers (a real redis-server): greedy outputs equal to a run without any cache
through demotions and promotions, corrupted records, a restart, a second engine process and a Redis outage."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import redis

from agentkv.engine.llm import LLM
from agentkv.engine.sequence import SamplingParams
from agentkv.kvcache.policies import LRU
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


def engine(model_dir, tiers: str, **kw) -> LLM:
    probe = LLM(str(model_dir), dtype="float32", block_size=8, kv_cache_bytes=2**20)
    return LLM(str(model_dir), dtype="float32", block_size=8, check_invariants=True,
               kv_cache_bytes=probe.layout.page_bytes * GPU_PAGES, kv_tiers=tiers, **kw)


def run_twice(llm: LLM, ps: list[list[int]]) -> tuple[list[list[int]], dict[str, int]]:
    """All prompts, then each again alone, the most recent first (so that under LRU the second pass reaches
    down the tiers: GPU, then DRAM, then disk): (its outputs in prompt order, its cached tokens per tier)."""
    llm.generate(ps, GREEDY)
    again = [llm.generate([p], GREEDY)[0] for p in ps[::-1]][::-1]
    hits = {t: sum(o.cached_tokens_per_tier.get(t, 0) for o in again) for t in llm.tier_names}
    return [o.outputs[0].token_ids for o in again], hits


def test_dram_disk_redis_round_trip(model_dir, cases, tmp_path, redis_server):
    ps, expected = cases
    llm = engine(model_dir, f"dram=96,disk=1MiB@{tmp_path},redis=1MiB@{redis_server.url}")  # dram: 12 pages
    assert llm.tier_names == ["gpu", "dram", "disk", "remote"]
    out, hits = run_twice(llm, ps)
    assert out == expected
    assert hits["dram"] > 0 and hits["disk"] > 0, hits
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
    with caplog.at_level(logging.INFO):
        out = llm.generate(ps, GREEDY)  # batched: prompts 0 and 6 both read lost blocks
    assert [o.outputs[0].token_ids for o in out] == expected
    assert "failed verification" in caplog.text
    assert len({r.args[0] for r in caplog.records if "recomputes from token" in r.getMessage()}) >= 2

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
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, env=env)
    llm = engine(model_dir, f"redis=1MiB@{redis_server.url}")
    llm.add_request(ps[0], GREEDY, tenant="b")  # same tokens, another tenant: nothing shared
    out = next(o for o in iter(llm.step, None) if o and o[0].finished)[0]
    assert out.num_cached_tokens == 0 and out.outputs[0].token_ids == expected[0]
    shared = engine(model_dir, f"redis=1MiB@{redis_server.url}").generate([ps[6]], GREEDY)[0]
    assert shared.cached_tokens_per_tier["remote"] == 48  # computed by the other process
    assert shared.outputs[0].token_ids == expected[6]


def test_redis_killed_mid_run_then_restarted(model_dir, cases, redis_server):
    ps, expected = cases
    llm = engine(model_dir, f"redis=1MiB@{redis_server.url}")
    store = llm.tiering.shared.store
    store.backoff_s = (0.05, 0.1)
    assert [o.outputs[0].token_ids for o in llm.generate(ps[:3], GREEDY)] == expected[:3]
    redis_server.kill()
    assert [o.outputs[0].token_ids for o in llm.generate(ps[3:6], GREEDY)] == expected[3:6]  # no request fails
    llm.tiering.mover.barrier(store).result(10)
    assert not store.up
    redis_server.start()  # empty: nothing was persisted
    time.sleep(0.15)
    assert llm.generate([ps[0]], GREEDY)[0].outputs[0].token_ids == expected[0]  # a GPU hit, nothing named
    new = prompts(1, seed=77, lo=60, hi=61)[0]
    llm.generate([new], GREEDY)  # new blocks: written through again
    llm.tiering.mover.barrier(store).result(10)
    assert store.up
    follow_up = [*new[:40], 3, 4, 5]
    plain = LLM(str(model_dir), dtype="float32", block_size=8, enable_prefix_caching=False)
    fresh = engine(model_dir, f"redis=1MiB@{redis_server.url}").generate([follow_up], GREEDY)[0]
    assert fresh.cached_tokens_per_tier["remote"] == 40
    assert fresh.outputs[0].token_ids == plain.generate([follow_up], GREEDY)[0].outputs[0].token_ids


def test_generate_command_reuses_its_disk_tier(model_dir, tmp_path, capsys):
    import json

    from agentkv.cli import main

    words = "the agent reads a file and calls a tool then writes code tests pass fail again fix bug hello world"
    argv = ["generate", "--model", str(model_dir), "--prompt", f"{words} {words}", "--max-tokens", "4",
            "--dtype", "float32", "--kv-tiers", f"dram=1MiB,disk=4MiB@{tmp_path}", "--json"]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)[0]
    assert main(argv) == 0  # a new engine: only the disk tier remembers
    second = json.loads(capsys.readouterr().out)[0]
    assert first["cached_tokens"] == 0 and second["cached_tokens_per_tier"]["disk"] == 32
    assert second["token_ids"] == first["token_ids"]


def test_unreachable_redis_and_a_full_disk_never_stop_the_engine(model_dir, cases, tmp_path):
    import resource
    import signal
    import socket

    ps, expected = cases
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{s.getsockname()[1]}"
    llm = engine(model_dir, f"disk=1MiB@{tmp_path},redis=1MiB@{dead}")
    disk_tier = llm.tier_names.index("disk")
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    disk = llm.tiering.stores[0].store
    resource.setrlimit(resource.RLIMIT_FSIZE, (10 * disk.slot_bytes, old_limit[1]))  # full after 10 pages
    try:
        out, _ = run_twice(llm, ps)
        llm.tiering.mover.close()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert out == expected
    llm.generate(ps[:1], GREEDY)  # the next plan's repair hears of the shrink
    assert llm.cache.capacity[disk_tier] == disk.capacity_pages == 10 < (1 << 20) // disk.slot_bytes
    assert not llm.tiering.shared.store.up


def test_a_prefix_in_flight_from_disk_never_stalls_running_requests(model_dir, cases, tmp_path):
    """A request whose prefix only the disk holds waits in the queue until its load is done, while running
    requests keep decoding; then it is admitted and served from disk. The disk is made slow by holding its
    loads at a gate (the real store then reads the real records)."""
    ps, expected = cases
    first = engine(model_dir, f"disk=1MiB@{tmp_path}")
    first.generate([ps[0]], GREEDY)
    first.close()
    llm = engine(model_dir, f"disk=1MiB@{tmp_path}")
    disk = next(s.store for s in llm.tiering.stores if getattr(s, "store", None) is not None)
    gate, real_get = threading.Event(), disk.get
    disk.get = lambda keys, out: (gate.wait(30), real_get(keys, out))[1]
    busy = llm.add_request(ps[1], SamplingParams(max_tokens=20, temperature=0, ignore_eos=True))
    llm.step()
    waiting = llm.add_request(ps[0], GREEDY)
    for _ in range(5):  # the load is held: the running request decodes on, the new one stays queued
        assert [o.request_id for o in llm.step()] == [busy]
    assert [s.request_id for s in llm.scheduler.waiting] == [waiting]
    gate.set()
    done = {}
    while llm.has_unfinished_requests():
        done.update({o.request_id: o for o in llm.step() if o.finished})
    assert done[waiting].outputs[0].token_ids == expected[0] and done[waiting].cached_tokens_per_tier["disk"] > 0
    llm.close()


class Predicts(LRU):
    """LRU that, once told a chain, predicts its return (as the agent-aware policy does for a session that is
    due back) and ranks it above everything else."""

    def __init__(self) -> None:
        super().__init__()
        self.chain = np.zeros(0, dtype=np.int64)

    def prefetch(self, now: float) -> list[np.ndarray]:
        return [self.chain] if len(self.chain) else []

    def keys(self, slots: np.ndarray, now: float) -> np.ndarray:
        return np.where(np.isin(slots, self.chain), np.inf, super().keys(slots, now))


def test_a_predicted_return_loads_from_disk_in_the_background(model_dir, cases, tmp_path):
    """The policy predicts a session's return while its prefix is on disk: the load starts at once, steps go on
    without waiting for it (the disk's loads are held at a gate), and the promotion to the GPU happens in the
    first step after the load is done; the session's next request then hits the GPU."""
    ps, expected = cases
    policy = Predicts()
    llm = engine(model_dir, f"disk=1MiB@{tmp_path}", policy=policy)
    rid = llm.add_request(ps[0], GREEDY)
    prefix = llm._seqs[rid].block_ids.copy()
    while llm.has_unfinished_requests():
        llm.step()
    llm.generate(ps[1:6], GREEDY)  # pushes the first prompt's blocks down to disk
    assert (llm.cache.tier_of(prefix) == 1).all()
    disk = llm.tiering.stores[0]
    gate, real_get = threading.Event(), disk.store.get
    disk.store.get = lambda keys, out: (gate.wait(30), real_get(keys, out))[1]
    policy.chain = prefix  # the session is due back
    busy = llm.add_request(prompts(1, seed=9, lo=20, hi=30)[0], SamplingParams(max_tokens=8, temperature=0,
                                                                               ignore_eos=True))  # nothing cached
    for _ in range(4):  # the load is held: steps run on, the blocks stay on disk until it is done
        assert [o.request_id for o in llm.step()] == [busy]
    assert (llm.cache.tier_of(prefix) == 1).all()
    keys = [llm.ids.keys[b] for b in prefix.tolist()]
    assert not disk.fetched(keys).any() and all(k.digest in disk.ahead for k in keys)
    gate.set()
    for k in keys:
        disk.ahead[k.digest][1].result(30)
    llm.step()
    assert (llm.cache.tier_of(prefix) == 0).all() and llm.cache.stats.prefetched >= len(prefix)
    while llm.has_unfinished_requests():
        llm.step()
    out = llm.generate([ps[0]], GREEDY)[0]
    assert out.outputs[0].token_ids == expected[0]
    assert out.cached_tokens_per_tier["gpu"] >= 8 * len(prefix) - 8 and out.cached_tokens_per_tier["disk"] == 0
    llm.close()


def test_a_store_slower_than_recomputing_is_skipped(model_dir, cases, tmp_path):
    """Loads from a disk that takes 0.3 s a page (held by a delay around the real store) are slower than this
    engine recomputes a block: after the first load measures it, prefixes it holds are recomputed instead."""
    ps, expected = cases
    first = engine(model_dir, f"disk=1MiB@{tmp_path}")
    first.generate(ps[:4], GREEDY)
    first.close()
    llm = engine(model_dir, f"disk=1MiB@{tmp_path}")
    disk = next(s for s in llm.tiering.stores if getattr(s, "store", None) is not None)
    real_get = disk.store.get
    disk.store.get = lambda keys, out: (time.sleep(0.3 * len(keys)), real_get(keys, out))[1]
    outs = [llm.generate([p], GREEDY)[0] for p in ps[:4]]
    assert [o.outputs[0].token_ids for o in outs] == expected[:4]
    assert outs[0].cached_tokens_per_tier["disk"] > 0  # the first load is what measures the store
    assert disk.load_s > llm.tiering.recompute_s
    assert all(o.cached_tokens_per_tier["disk"] == 0 for o in outs[1:])  # then it is skipped
    llm.close()


def test_a_disk_tier_that_cannot_be_opened_is_left_out_and_said(model_dir, cases, tmp_path, caplog):
    """A tier folder the process cannot create or write (here: a file stands where the folder should be; a
    read-only or full filesystem fails the same way, with an OSError) leaves the engine without that tier."""
    ps, expected = cases
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    llm = engine(model_dir, f"dram=64KiB,disk=1MiB@{blocker / 'kv'}")
    assert "disk" not in llm.tier_names and "dram" in llm.tier_names
    assert any("cannot be used" in r.message and "serving without it" in r.message for r in caplog.records)
    out, _ = run_twice(llm, ps)
    assert out == expected
