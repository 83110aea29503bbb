"""The engine's tiers under the break test's faults: a redis-server stopped with SIGSTOP never stalls a running
stream (its lookups are bypassed after one short deadline), a process killed after generate keeps its disk
blocks for the next one, and the engine touches the Redis copies of every prefix it admits."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import redis

from agentkv.engine.sequence import SamplingParams
from tests.engine.conftest import prompts
from tests.storage.test_engine_tiers import GREEDY, cases, engine, model_dir  # noqa: F401 (fixtures)

ROOT = Path(__file__).resolve().parents[2]


def test_a_stopped_redis_never_stalls_a_running_stream(model_dir, redis_server):  # noqa: F811
    llm = engine(model_dir, f"redis=1MiB@{redis_server.url}")
    busy = llm.add_request(prompts(1, seed=9, lo=30, hi=31)[0], SamplingParams(max_tokens=60, temperature=0,
                                                                               ignore_eos=True))
    for _ in range(3):
        llm.step()
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        gaps, last, tokens = [], time.monotonic(), 0
        for i, p in enumerate(prompts(8, seed=10, lo=20, hi=40)):  # new prefixes: each admission asks Redis
            llm.add_request(p, SamplingParams(max_tokens=4, temperature=0), request_id=f"new-{i}")
            for _ in range(3):
                outs = llm.step()
                now = time.monotonic()
                if any(o.request_id == busy for o in outs):
                    gaps.append(now - last)
                    last, tokens = now, tokens + 1
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    assert tokens >= 20 and max(gaps) < 0.5, max(gaps)
    while llm.has_unfinished_requests():
        llm.step()
    llm.close()


KILLED = """
import os, sys
from agentkv.engine.llm import LLM
from agentkv.engine.sequence import SamplingParams
from tests.engine.conftest import prompts
llm = LLM(sys.argv[1], dtype="float32", block_size=8, kv_cache_bytes=2**21, kv_tiers="disk=1MiB@" + sys.argv[2])
llm.generate(prompts(6, seed=5, lo=40, hi=90), SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
if sys.argv[3] == "kill":  # the writes already issued finish (the mover's queue), then the process dies at once
    disk = next(s for s in llm.tiering.stores if getattr(s, "store", None) is not None)
    llm.tiering.mover.barrier(disk.store).result()
    os._exit(0)
# "exit": the interpreter ends without close()
"""


def _restart_hits(model_dir, folder, cases) -> int:  # noqa: F811
    ps, expected = cases
    llm = engine(model_dir, f"disk=1MiB@{folder}")
    out = [llm.generate([p], GREEDY)[0] for p in ps[:6]]
    assert [o.outputs[0].token_ids for o in out] == expected[:6]
    llm.close()
    return sum(o.cached_tokens_per_tier["disk"] for o in out)


def test_a_killed_process_keeps_its_disk_blocks(model_dir, cases, tmp_path):  # noqa: F811
    for how in ("kill", "exit"):
        folder = tmp_path / how
        subprocess.run([sys.executable, "-c", textwrap.dedent(KILLED), str(model_dir), str(folder), how], cwd=ROOT,
                       check=True, timeout=120)
        whole = sum(len(p) // 8 * 8 for p in cases[0][:6])
        assert _restart_hits(model_dir, folder, cases) >= 0.8 * whole, how  # (the last token is always computed)


def test_admitted_prefixes_refresh_their_redis_copies(model_dir, cases, redis_server):  # noqa: F811
    ps, _ = cases
    llm = engine(model_dir, f"redis=1MiB@{redis_server.url}")
    llm.generate([ps[0]], GREEDY)
    llm.tiering.mover.barrier(llm.tiering.shared.store).result()  # copies are written behind: wait for them
    raw = redis.Redis.from_url(redis_server.url)
    names = raw.keys("akv:*")
    assert names, "the prompt's blocks were not copied to Redis"
    time.sleep(2.1)
    assert min(raw.object("idletime", n) for n in names) >= 2
    llm.generate([ps[0]], GREEDY)  # served from the GPU; its Redis copies are touched all the same
    llm.tiering.mover.barrier(llm.tiering.shared.store).result()
    idle = sorted(raw.object("idletime", n) for n in names)
    assert max(idle[: len(ps[0]) // 8]) <= 1, idle  # every block of its prefix used again just now
    llm.close()


def test_a_redis_that_hung_is_used_again_as_soon_as_it_answers(redis_server):
    """A load that waited out a freeze measured the freeze, not Redis: once Redis answers again its speed is
    re-measured, so it is not skipped as slower than recomputing for hundreds of requests."""
    import numpy as np
    import torch

    from agentkv.engine.tiering import LOAD_S, MovedStore
    from agentkv.storage.mover import Mover
    from agentkv.storage.redis_store import RedisStore
    from tests.storage.conftest import PAGE, make_blocks

    keys, pages = make_blocks(4, salt="hung")
    mover = Mover()
    store = MovedStore(RedisStore(redis_server.url, PAGE), mover)
    store.store.put(keys, pages)
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        out = torch.empty(4, PAGE, dtype=torch.uint8)
        t0 = time.monotonic()
        assert not store.get(keys, out).any() and time.monotonic() - t0 < LOAD_S + 0.5  # bypassed, not waited
        time.sleep(1.0)
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    store.late.result(timeout=10)  # the hung load finishes once Redis resumes
    assert not store.bypassed() and np.isnan(store.load_s)  # not ~1 s a page
    assert store.get(keys, out).all() and torch.equal(out, pages)
    mover.close()
