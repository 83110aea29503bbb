"""Replay a trace through the policy core with no service timing: what a policy would hit, tier by tier.

Requests run one at a time in arrival order (placed by an arrival model): tick (prefetch) at the arrival,
acquire, commit the blocks it computes, release. Each request is atomic, so nothing else is pinned while it
runs; its own blocks must fit in the GPU tier, so a request longer than that tier caches only its first
`capacity` blocks (the rest is recomputed every time: a real engine could not hold it either).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.policy import AccessContext, Policy

if TYPE_CHECKING:  # the core reads a trace's arrays; it does not import the workload package
    from agentkv.workload.trace import Trace


@dataclass(slots=True)
class ReplayResult:
    policy: str
    tiers: list[str]
    capacity_tokens: list[float]
    requests: int
    input_tokens: int
    hit_tokens: np.ndarray  # per tier the hit was served from
    block_bytes: list[int]
    promoted_blocks: np.ndarray  # per source tier
    demoted_blocks: np.ndarray  # per source tier
    freed_blocks: np.ndarray  # per tier: evicted where a lower tier keeps a copy
    dropped_blocks: np.ndarray  # per tier: gone from the cache
    written_blocks: int
    prefetched_blocks: int
    seconds: float
    extra: dict = field(default_factory=dict)

    @property
    def hit_rate(self) -> float:
        return float(self.hit_tokens.sum()) / max(self.input_tokens, 1)

    @property
    def hit_rate_per_tier(self) -> np.ndarray:
        return self.hit_tokens / max(self.input_tokens, 1)

    @property
    def recomputed_tokens(self) -> int:
        return int(self.input_tokens - self.hit_tokens.sum())

    def bytes_moved(self) -> dict[str, float]:
        b = np.asarray(self.block_bytes, dtype=np.float64)
        return {
            "promoted": float((self.promoted_blocks * b).sum()),
            "demoted": float((self.demoted_blocks * b).sum()),
            "dropped": float((self.dropped_blocks * b).sum()),
            "written": float(self.written_blocks * (b[1] if len(b) > 1 else 0.0)),
        }


@dataclass(slots=True)
class ReferenceStream:
    """The blocks each request (in replay order) can cache: its ids, cut to what the GPU tier can hold. Built
    from the block log as the replay reaches each request (a list of every request's ids is the flat trace)."""

    trace: Trace
    order: np.ndarray
    gpu_blocks: int

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, rank: int) -> np.ndarray:
        return self.trace.blocks(int(self.order[rank]))[: self.gpu_blocks]

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in self.order.tolist():
            yield self.trace.blocks(i)[: self.gpu_blocks]


def reference_stream(trace: Trace, order: np.ndarray, gpu_blocks: int) -> ReferenceStream:
    return ReferenceStream(trace, order, gpu_blocks)


def replay(
    trace: Trace,
    order: np.ndarray,
    arrivals: np.ndarray,
    cache: KVCache,
    stream: Iterable[np.ndarray] | None = None,
) -> ReplayResult:
    if not trace.has_block_ids:
        raise ValueError("trace has no block ids (prefix information): it cannot drive a cache")
    gpu_blocks = int(cache.capacity[0])
    stream = stream if stream is not None else reference_stream(trace, order, gpu_blocks)
    bs = trace.block_size
    n_tiers = len(cache.tiers)
    hit_tokens = np.zeros(n_tiers, dtype=np.int64)
    prefetching = type(cache.policy).prefetch is not Policy.prefetch
    service = np.nan_to_num(trace.api_time.astype(np.float64), nan=0.0)
    t0 = time.perf_counter()
    for rank, (i, ids) in enumerate(zip(order.tolist(), stream, strict=True)):
        now = float(arrivals[i])
        ctx = AccessContext(now, session=int(trace.session[i]), tenant=int(trace.session_tenant[trace.session[i]]),
                            request=rank, finish=int(trace.finish[i]), output_tokens=int(trace.output_tokens[i]))
        if prefetching:
            cache.tick(now)
        grant = cache.acquire(rank, ids, len(ids), ctx)
        if grant is None:  # cannot happen: requests run alone and fit (cut to the GPU tier)
            raise RuntimeError(f"replay: request {i} did not fit in the GPU tier")
        cache.commit(rank, ids[grant.hit_blocks :], now)
        ctx.now = now + float(service[i])  # the turn ends when the reply is done, as an engine sees it
        cache.release(rank, ctx)
        got = grant.hits_per_tier * bs
        excess = grant.hit_blocks * bs - int(trace.input_tokens[i])  # a partial last block's id (Mooncake)
        if excess > 0:
            got[int(grant.hit_tiers[-1])] -= excess
        hit_tokens += got
    st = cache.stats
    return ReplayResult(
        policy=cache.policy.name,
        tiers=[t.name for t in cache.tiers],
        capacity_tokens=[t.capacity_blocks * bs for t in cache.tiers],
        requests=len(order),
        input_tokens=int(trace.input_tokens[order].sum()),
        hit_tokens=hit_tokens,
        block_bytes=[t.block_bytes for t in cache.tiers],
        promoted_blocks=st.promoted.copy(),
        demoted_blocks=st.demoted.copy(),
        freed_blocks=st.freed.copy(),
        dropped_blocks=st.dropped.copy(),
        written_blocks=st.written,
        prefetched_blocks=st.prefetched,
        seconds=time.perf_counter() - t0,
    )
