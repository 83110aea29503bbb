"""The 195 shared Claude Code sessions through each online policy: seconds, and cost linear in tokens.

Baselines (same run): LRU, for what a smarter policy costs; and each policy's own 1x run, for linearity: the
trace is replicated 1x, 2x and 4x (fresh ids per copy, 20 concurrent sessions per copy) and time per
million tokens should stay flat.
Run: .venv/bin/python -m bench.cache_replay
"""

from __future__ import annotations

import sys
from functools import partial

from agentkv.catalog import model
from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.policies import make_policy
from agentkv.kvcache.replay import reference_stream, replay
from agentkv.kvcache.tiers import TierSpec
from agentkv.workload import load_trace
from agentkv.workload.arrivals import ArrivalModel, place, replay_order
from bench._common import TRACES, best_of, machine

GPU_TOKENS = 256_000


def main() -> int:
    base = load_trace(str(TRACES / "claude-code"))
    print(f"machine: {machine()}")
    print(f"GPU tier {GPU_TOKENS:,} tokens, Poisson arrivals at 20 concurrent sessions per copy, atomic replay")
    ok = True
    first: dict[str, float] = {}
    first_lru: dict[int, float] = {}
    for copies in (1, 2, 4):
        trace, arrivals = place(base.replicate(copies), ArrivalModel("concurrency", 20 * copies))
        order = replay_order(arrivals)
        blocks = GPU_TOKENS // trace.block_size
        stream = reference_stream(trace, order, blocks)
        mtok = trace.input_tokens.sum() / 1e6
        print(f"\n{copies}x: {trace.n_requests:,} requests, {mtok:,.0f}M tokens")
        for name in ("lru", "lfu", "cost", "agent"):
            policy = make_policy(name, stream, model("llama-3.1-8b"))
            cache = KVCache([TierSpec("gpu", blocks, 1)], policy)
            secs, res = best_of(partial(replay, trace, order, arrivals, cache, stream), repeat=1)
            per_mtok = secs / mtok
            first.setdefault(name, per_mtok)
            lru = first_lru[copies] = first_lru.get(copies, secs)
            print(f"  {name:6s} {secs:6.2f} s  {secs / lru:4.2f}x LRU  {1e3 * per_mtok:5.2f} ms/Mtok "
                  f"({per_mtok / first[name]:4.2f}x its 1x rate)  hit {100 * res.hit_rate:.1f}%")
            ok &= copies > 1 or secs < 10
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
