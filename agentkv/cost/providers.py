"""What a trace costs at API providers, each with its own models, windows and prompt-caching rules
(agentkv/data/prices.toml).

Every request is priced at the model that serves it (the trace records which model it went to; a provider maps
it to one of its own by name), at the long-context rates where its prompt passes the model's threshold; a request
larger than the model's window is refused: counted, never priced. Requests are replayed in arrival order, one
cache per tenant and model. A request's cacheable prefix is the leading run of its blocks still live (written or
read within the TTL); the client is assumed to mark the whole prompt for caching, as coding agents do:
- explicit (Anthropic-style): the uncached rest is written at write_5m x input, the cached part read at
  read x input; both refresh the TTL; prompts under min_prefix are neither read nor written from cache;
- automatic (OpenAI-style): no write premium; hits count only from min_prefix tokens, in `step` increments;
- hitmiss (DeepSeek-style): hits in `step`-token units at read x input, misses at input, long TTL.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from agentkv.workload.trace import Trace

KINDS = ("explicit", "automatic", "hitmiss")


@dataclass(slots=True, frozen=True)
class ModelPrice:
    """One model's list prices ($ per million tokens) and window."""

    name: str
    match: str
    input: float
    output: float
    context: int
    min_prefix: int
    long_above: int  # prompts over this many tokens pay the long rates (0: no long-context tier)
    long_input: float
    long_output: float
    read: float  # cache hits, x input
    serves: str = ""  # the catalog model (models.toml) this row sells, for open models a user could self-host

    def rates(self, prompt: int) -> tuple[float, float]:
        """$ per input and output token for a prompt of this size."""
        long = 0 < self.long_above < prompt
        return (self.long_input if long else self.input) / 1e6, (self.long_output if long else self.output) / 1e6


@dataclass(slots=True, frozen=True)
class ProviderCost:
    name: str
    usd: float
    usd_no_cache: float  # the same traffic with caching off
    cached_tokens: int
    input_tokens: int  # of the requests served
    output_tokens: int
    refused: int = 0  # requests larger than their model's window: not served, not priced
    refused_tokens: int = 0  # their prompt tokens
    usd_by_model: tuple[tuple[str, float], ...] = ()
    unmatched: tuple[str, ...] = ()  # the trace's models with no row of their exact version: priced at the default
    as_of: str = ""  # the date its prices were read

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / max(self.input_tokens, 1)

    @property
    def saving(self) -> float:
        return 1.0 - self.usd / self.usd_no_cache if self.usd_no_cache else 0.0

    @property
    def usd_per_mtok(self) -> float:
        return self.usd / ((self.input_tokens + self.output_tokens) / 1e6)


def model_prices(name: str, sched: dict[str, Any]) -> list[ModelPrice]:
    """The provider's models, each field checked (errors name the provider, model and field)."""
    models = sched.get("models")
    if not isinstance(models, dict) or not models:
        raise ValueError(f"provider '{name}': no [providers.{name}.models.*] table")
    out = [_model_price(name, m, t, sched) for m, t in models.items()]
    if sched.get("default") not in models:
        raise ValueError(f"provider '{name}': field 'default' must name one of its models, got {sched.get('default')!r}")
    return out


def _model_price(provider: str, name: str, t: dict[str, Any], sched: dict[str, Any]) -> ModelPrice:
    def num(field: str, default: Any = None) -> float:
        v = t.get(field, default)
        if not isinstance(v, int | float) or v < 0:
            raise ValueError(f"provider '{provider}' model '{name}': field '{field}' must be a number >= 0, got {v!r}")
        return float(v)

    return ModelPrice(name, str(t.get("match", "")), num("input"), num("output"), int(num("context")),
                      int(num("min_prefix", sched.get("min_prefix", 0))), int(num("long_above", 0)),
                      num("long_input", t.get("input")), num("long_output", t.get("output")),
                      num("read", sched.get("read")), str(t.get("serves", "")))


def serving_model(models: list[ModelPrice], default: str, requested: str) -> int:
    """Index of the model a request for `requested` is priced at: the one with the longest `match` it contains
    (an exact version, "opus-4-1", beats a family), else the provider's default."""
    hits = [(len(m.match), -k) for k, m in enumerate(models) if requested and m.match and m.match in requested]
    return -max(hits)[1] if hits else next(k for k, m in enumerate(models) if m.name == default)


def provider_cost(trace: Trace, arrivals: np.ndarray, name: str, sched: dict[str, Any],
                  only: str | None = None) -> ProviderCost:
    """The trace at this provider: each request at its own model's row, or every request at the row `only`."""
    kind = sched.get("kind")
    if kind not in KINDS:
        raise ValueError(f"provider '{name}': field 'kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    models = model_prices(name, sched)
    ttl = float(sched["ttl_s"])
    write = float(sched.get("write_5m", 1.0)) if kind == "explicit" else 1.0
    step = int(sched.get("step", 1))
    names = trace.model_names()
    by_name = {n: serving_model(models, only or sched["default"], "" if only else n) for n in set(names.tolist())}
    unmatched = tuple(sorted(n for n in by_name if n and not only and not any(m.match and m.match in n
                                                                                for m in models)))
    serving = np.array([by_name[n] for n in names], dtype=np.int64)
    bs = trace.block_size
    expiry = np.full((len(models), trace.n_block_ids), -np.inf)  # one cache per model
    usd = usd_plain = cached_total = 0.0
    usd_model = np.zeros(len(models))
    served = np.zeros(trace.n_requests, dtype=bool)
    for i in np.argsort(arrivals, kind="stable"):
        now, n_in, n_out = float(arrivals[i]), int(trace.input_tokens[i]), int(trace.output_tokens[i])
        k = int(serving[i])
        m = models[k]
        if n_in + n_out > m.context:
            continue
        served[i] = True
        p_in, p_out = m.rates(n_in)
        ids = trace.blocks(int(i))
        live = expiry[k, ids] >= now
        run = int(np.argmin(live)) if len(ids) and not live.all() else len(ids)
        cached = min(run * bs, n_in)
        if cached < m.min_prefix or n_in < m.min_prefix:
            cached = 0
        elif kind == "automatic":
            cached = m.min_prefix + step * ((cached - m.min_prefix) // step)
        elif kind == "hitmiss":
            cached = step * (cached // step)
        cacheable = n_in >= m.min_prefix
        cost = cached * m.read * p_in + (n_in - cached) * (write if cacheable else 1.0) * p_in + n_out * p_out
        if cacheable:
            expiry[k, ids] = now + ttl  # written, or read and refreshed
        usd += cost
        usd_model[k] += cost
        usd_plain += n_in * p_in + n_out * p_out
        cached_total += cached
    refused = ~served
    return ProviderCost(
        name, usd, usd_plain, int(cached_total), int(trace.input_tokens[served].sum()),
        int(trace.output_tokens[served].sum()), int(refused.sum()), int(trace.input_tokens[refused].sum()),
        tuple((m.name, float(u)) for m, u in zip(models, usd_model, strict=True) if u > 0), unmatched,
        str(sched.get("as_of", "")),
    )


def all_providers(trace: Trace, arrivals: np.ndarray, table: dict[str, Any]) -> list[ProviderCost]:
    if not trace.has_block_ids:
        raise ValueError("trace has no block ids: provider caches cannot be replayed on it")
    return [provider_cost(trace, arrivals, name, sched) for name, sched in table.items()]


def same_model_apis(trace: Trace, arrivals: np.ndarray, prices: dict[str, Any], model: str) -> list[ProviderCost]:
    """Every API row that sells the catalog model `model` (its lab's own API and the hosts of open weights:
    prices.toml's [providers] and [open_apis] rows whose `serves` names it), each pricing the whole trace.
    These are the prices a self-hosted deployment of that model competes with."""
    out = []
    for table in (prices.get("providers", {}), prices.get("open_apis", {})):
        for name, sched in table.items():
            for m in model_prices(name, sched):
                if m.serves == model:
                    out.append(replace(provider_cost(trace, arrivals, name, sched, only=m.name),
                                       name=f"{name} {m.name}"))
    return out
