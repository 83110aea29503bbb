"""Provider cache rules and self-hosted cost attribution."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from agentkv.catalog import hardware, model, prices
from agentkv.cost.plans import break_even
from agentkv.cost.providers import provider_cost
from agentkv.cost.selfhosted import self_hosted_cost
from agentkv.kvcache.sizing import codec
from agentkv.sim.simulator import SimConfig, simulate
from agentkv.sim.stepcost import Deployment
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.builder import TraceBuilder


def one_model(kind: str, input: float, output: float, context: int = 10**6, **rules) -> dict:
    """A provider schedule selling one model."""
    return {"kind": kind, "default": "m", **rules,
            "models": {"m": {"match": "", "input": input, "output": output, "context": context}}}


SCHED = one_model("explicit", 3.0, 15.0, write_5m=1.25, read=0.1, min_prefix=1024, ttl_s=300)


def trace_of(requests, model: str | None = None):
    """requests: (time, input tokens, ids) of one session; block size 64."""
    b = TraceBuilder(64)
    s = b.add_session("s", start=0.0)
    for t, n, ids in requests:
        b.add_request(s, t, n, 0, ids, model=model)
    return b.build()


def cost(trace, sched):
    arrivals = trace.time.copy()
    return provider_cost(trace, arrivals, "p", sched)


def test_explicit_caching_reads_writes_and_ttl():
    ids = np.arange(32)  # 2048 tokens
    t = trace_of([(0, 2048, ids), (100, 2048, ids), (100 + 301, 2048, ids)])
    c = cost(t, SCHED)
    per_tok = 3.0 / 1e6
    # write all, then read all (within TTL), then the TTL has lapsed: written again
    expect = 2048 * 1.25 * per_tok + 2048 * 0.1 * per_tok + 2048 * 1.25 * per_tok
    assert c.usd == pytest.approx(expect)
    assert c.cached_tokens == 2048


def test_hits_refresh_the_ttl():
    ids = np.arange(32)
    t = trace_of([(0, 2048, ids), (250, 2048, ids), (500, 2048, ids)])
    assert cost(t, SCHED).cached_tokens == 4096  # 500 s after the write, but 250 s after the refreshing read


def test_min_prefix_and_automatic_increments():
    short = trace_of([(0, 900, np.arange(14)), (1, 900, np.arange(14))])
    assert cost(short, SCHED).cached_tokens == 0  # under the minimum: never cached
    auto = one_model("automatic", 1.0, 1.0, read=0.1, min_prefix=1024, step=128, ttl_s=600)
    t = trace_of([(0, 1600, np.arange(25)), (1, 1700, np.arange(26))])
    c = cost(t, auto)
    assert c.cached_tokens == 1024 + 128 * ((1600 - 1024) // 128)  # 1536: whole 128-token steps only
    assert c.usd == pytest.approx(((1600 + 1700 - c.cached_tokens) + 0.1 * c.cached_tokens) / 1e6)


def test_prefix_break_stops_the_hit():
    a = np.arange(32)
    b = np.concatenate([a[:20], np.arange(100, 112)])
    c = cost(trace_of([(0, 2048, a), (10, 2048, b)]), SCHED)
    assert c.cached_tokens == 20 * 64


def test_builtin_schedules_and_break_even():
    table = prices()["providers"]
    t = trace_of([(10 * k, 4096 + 64 * k, np.arange(64 + k)) for k in range(4)])  # an agent loop
    costs = [provider_cost(t, t.time.copy(), n, s) for n, s in table.items()]
    assert all(0 < c.usd < c.usd_no_cache for c in costs)
    one_shot = trace_of([(0, 4096, np.arange(64)), (10, 4160, np.arange(65))])
    premium = provider_cost(one_shot, one_shot.time.copy(), "1h", table["anthropic-1h"])
    assert premium.usd > premium.usd_no_cache  # a 2x write read back once does not pay for itself
    be = break_even({"pro": 20.0}, costs, sessions=1)
    assert all(b.sessions_per_month == pytest.approx(20.0 / c.usd) for b, c in zip(be, costs, strict=True))


def test_each_request_is_priced_at_its_own_model():
    """A session that moves between Opus, Sonnet and Haiku pays each model's list price; the caches are per model
    (Sonnet's first request writes again what Opus cached); a Sonnet prompt over 200k pays the long-context tier;
    an Opus prompt over its 200k window is refused, counted and not priced."""
    table = prices()["providers"]["anthropic"]
    b = TraceBuilder(64)
    s = b.add_session("s")
    ids = np.arange(5000)
    plan = [(0, "claude-opus-4-5-20251101", 64_000), (60, "claude-opus-4-5-20251101", 64_000),
            (120, "claude-sonnet-4-5-20250929", 64_000), (180, "claude-haiku-4-5-20251001", 64_000),
            (240, "claude-sonnet-4-5-20250929", 256_000), (300, "claude-opus-4-5-20251101", 256_000)]
    for t, m, n in plan:
        b.add_request(s, t, n, 1000, ids[: n // 64], model=m)
    c = provider_cost(b.build(), np.array([t for t, _, _ in plan], dtype=float), "anthropic", table)
    mtok = 1e-6
    opus = 64_000 * 1.25 * 5 * mtok + 64_000 * 0.1 * 5 * mtok + 2 * 1000 * 25 * mtok
    sonnet = 64_000 * 1.25 * 3 * mtok + 1000 * 15 * mtok
    haiku = 64_000 * 1.25 * 1 * mtok + 1000 * 5 * mtok
    long = 64_000 * 0.1 * 6 * mtok + (256_000 - 64_000) * 1.25 * 6 * mtok + 1000 * 22.5 * mtok  # 64k still live
    assert c.usd == pytest.approx(opus + sonnet + haiku + long)
    assert (c.refused, c.refused_tokens) == (1, 256_000)
    assert c.input_tokens == 4 * 64_000 + 256_000
    assert dict(c.usd_by_model) == pytest.approx({"claude-opus-4-5": opus, "claude-sonnet-4-5": sonnet + long,
                                                  "claude-haiku-4-5": haiku})


def test_a_request_without_a_model_is_priced_at_the_default_and_windows_bind_other_providers():
    t = trace_of([(0, 150_000, np.arange(2343)), (10, 100_000, np.arange(1562))])
    table = prices()["providers"]
    deepseek = provider_cost(t, t.time.copy(), "deepseek", table["deepseek"])
    assert deepseek.refused == 1 and deepseek.input_tokens == 100_000  # 128k window
    anthropic = provider_cost(t, t.time.copy(), "anthropic", table["anthropic"])
    assert anthropic.refused == 0 and dict(anthropic.usd_by_model).keys() == {"claude-sonnet-4-5"}


def test_every_price_names_its_source_and_date():
    table = prices()
    for section in ("gpu_hour", "plans", *(f"providers.{p}" for p in table["providers"])):
        entry = table
        for key in section.split("."):
            entry = entry[key]
        assert entry.get("source") and entry.get("as_of"), section


def test_a_broken_model_table_is_named():
    bad = one_model("explicit", 3.0, 15.0, read=0.1, ttl_s=300)
    bad["models"]["m"]["context"] = "big"
    with pytest.raises(ValueError, match="provider 'p' model 'm': field 'context'"):
        cost(trace_of([(0, 100, np.arange(1))]), bad)


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="field 'kind'"):
        cost(trace_of([(0, 100, np.arange(1))]), {**SCHED, "kind": "magic"})


def sessions_trace(tail_h: float = 0.0):
    """20 sessions of 6 turns a minute apart, 4k-token growing prompts; session 0 comes back `tail_h` hours later."""
    b = TraceBuilder(64)
    for k in range(20):
        s = b.add_session(f"s{k}")
        ids = np.arange(k * 1000, k * 1000 + 64 * 6)
        for turn in range(6):
            t = 60.0 * turn + (tail_h * 3600 if k == 0 and turn == 5 else 0.0)
            b.add_request(s, t, 4096 * (turn + 1), 200, ids[: 64 * (turn + 1)])
    return b.build()


def one_h200(arrival: ArrivalModel) -> SimConfig:
    return SimConfig(Deployment(hardware("h200"), model("llama-3.1-8b"), codec("bf16")), replicas=1, arrival=arrival)


def test_a_session_returning_days_later_bills_no_idle_tail():
    """One session that returns 72 h later once drained an idle fleet for days; placed warm, its return falls in
    the offered window (a copy of that session, already open), so the window billed, the tokens and their cost
    per token stay the same."""
    cfg = one_h200(ArrivalModel("rate", 1 / 30.0))
    short, long = simulate(sessions_trace(), cfg), simulate(sessions_trace(tail_h=72.0), cfg)
    assert long.offered_s == short.offered_s == pytest.approx(20 * 30.0)  # 20 sessions at one start per 30 s
    assert np.nanmax(long.arrival) < long.offered_s and long.billed.all()
    a, b = self_hosted_cost(short, 3.49), self_hosted_cost(long, 3.49)
    assert b.usd_per_mtok_blended == pytest.approx(a.usd_per_mtok_blended, rel=0.05)
    assert a.gpu_hours == pytest.approx(max(short.offered_s, short.busy_s.max()) / 3600)


def test_a_fleet_that_cannot_keep_pace_is_billed_for_its_busy_time():
    cfg = one_h200(ArrivalModel("rate", 100.0))  # 20 sessions in a fifth of a second
    res = simulate(sessions_trace(), cfg)
    assert res.busy_s.max() > res.offered_s
    assert res.billed_s == res.busy_s.max()


def test_cached_input_carries_the_attention_over_its_keys():
    """Sessions whose prompts come back from the HBM cache (nothing moves between tiers): cached input is charged
    the attention that reads its KV, not $0; the parts add up to the busy time."""
    cfg = one_h200(ArrivalModel("rate", 1 / 30.0))
    res = simulate(sessions_trace(), cfg)
    assert res.transfer_s == 0.0 and res.hit_rate > 0.5
    assert res.prefill_s + res.decode_s + res.cached_s == pytest.approx(res.busy_s.sum())
    c = self_hosted_cost(res, 3.49)
    assert c.usd_per_mtok_cached > 0
    cold = simulate(sessions_trace(), replace(cfg, prefix_cache=False))
    assert cold.cached_s == 0.0  # nothing served from cache: no attention charged to it


def test_the_split_prices_add_up_to_the_bill():
    """Uncached input, cached input (attention over its keys and the tier transfers that brought it back) and
    output, each at its own $/Mtok, add up to the fleet's $; so does the blended price over all tokens. Twelve
    generated sessions of Qwen3-Coder-30B at 20 concurrent overflow one H200's HBM into DRAM, so every part is
    non-zero."""
    from agentkv.workload.generator import GeneratorConfig, generate

    d = Deployment(hardware("h200"), model("qwen3-coder-30b-a3b"), codec("bf16"))
    cfg = SimConfig(d, arrival=ArrivalModel("concurrency", 20.0), dram_bytes=500e9)
    res = simulate(generate(GeneratorConfig(sessions=12, seed=0)), cfg)
    assert res.transfer_s > 0 and res.cached_s > 0 and res.prefill_s > 0
    c = self_hosted_cost(res, 3.49)
    cached = float(res.cached[res.billed].sum())
    tokens = {"uncached": float(res.prompt[res.billed].sum()) - cached, "cached": cached,
              "output": float(res.output[res.billed].sum())}
    parts = (c.usd_per_mtok_input * tokens["uncached"] + c.usd_per_mtok_cached * tokens["cached"]
             + c.usd_per_mtok_output * tokens["output"]) / 1e6
    assert parts == pytest.approx(c.usd, rel=1e-9)
    assert c.usd_per_mtok_blended * sum(tokens.values()) / 1e6 == pytest.approx(c.usd, rel=1e-9)
    assert c.usd == pytest.approx(c.gpu_hours * 3.49) and c.gpu_hours == pytest.approx(res.billed_s / 3600)
