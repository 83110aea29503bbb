"""What a trace costs at API providers, each with its own prompt-caching rules (agentkv/data/prices.toml).

Requests are replayed in arrival order per tenant cache. A request's cacheable prefix is the leading run of
its blocks that are still live (written or read within the TTL); the client is assumed to mark the whole
prompt for caching, as coding agents do:
- explicit (Anthropic-style): the uncached rest is written at write_5m x input, the cached part read at
  read x input; both refresh the TTL; prompts under min_prefix are neither read nor written from cache;
- automatic (OpenAI-style): no write premium; hits count only from min_prefix tokens, in `step` increments;
- hitmiss (DeepSeek-style): hits in `step`-token units at read x input, misses at input, long TTL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from agentkv.workload.trace import Trace

KINDS = ("explicit", "automatic", "hitmiss")


@dataclass(slots=True, frozen=True)
class ProviderCost:
    name: str
    usd: float
    usd_no_cache: float  # the same traffic with caching off
    cached_tokens: int
    input_tokens: int
    output_tokens: int

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / max(self.input_tokens, 1)

    @property
    def saving(self) -> float:
        return 1.0 - self.usd / self.usd_no_cache if self.usd_no_cache else 0.0

    @property
    def usd_per_mtok(self) -> float:
        return self.usd / ((self.input_tokens + self.output_tokens) / 1e6)


def provider_cost(trace: Trace, arrivals: np.ndarray, name: str, sched: dict[str, Any]) -> ProviderCost:
    kind = sched.get("kind")
    if kind not in KINDS:
        raise ValueError(f"provider '{name}': field 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    p_in, p_out = float(sched["input"]) / 1e6, float(sched["output"]) / 1e6
    read, ttl, min_prefix = float(sched["read"]), float(sched["ttl_s"]), int(sched.get("min_prefix", 0))
    write = float(sched.get("write_5m", 1.0)) if kind == "explicit" else 1.0
    step = int(sched.get("step", 1))
    bs = trace.block_size
    expiry = np.full(trace.n_block_ids, -np.inf)
    usd = cached_total = 0.0
    for i in np.argsort(arrivals, kind="stable"):
        now, n_in = float(arrivals[i]), int(trace.input_tokens[i])
        ids = trace.blocks(int(i))
        live = expiry[ids] >= now
        run = int(np.argmin(live)) if len(ids) and not live.all() else len(ids)
        cached = min(run * bs, n_in)
        if cached < min_prefix or n_in < min_prefix:
            cached = 0
        elif kind == "automatic":
            cached = min_prefix + step * ((cached - min_prefix) // step)
        elif kind == "hitmiss":
            cached = step * (cached // step)
        fresh = n_in - cached
        cacheable = n_in >= min_prefix
        usd += cached * read * p_in + fresh * (write if cacheable else 1.0) * p_in
        if cacheable:
            expiry[ids] = now + ttl  # written, or read and refreshed
        cached_total += cached
    out = int(trace.output_tokens.sum())
    total_in = int(trace.input_tokens.sum())
    usd += out * p_out
    return ProviderCost(name, usd, total_in * p_in + out * p_out, int(cached_total), total_in, out)


def all_providers(trace: Trace, arrivals: np.ndarray, table: dict[str, Any]) -> list[ProviderCost]:
    if not trace.has_block_ids:
        raise ValueError("trace has no block ids: provider caches cannot be replayed on it")
    return [provider_cost(trace, arrivals, name, sched) for name, sched in table.items()]
