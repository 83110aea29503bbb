"""The report's vocabulary and views. Every column is named once here, with its unit; the terminal table, the
HTML and the JSON all take their headers, keys and units from these definitions, and JSON values are plain
numbers in the unit the key names (`_pct`, `_s`, `_ms`, `_usd`...)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

import numpy as np

from agentkv.report.capacity import MAX_SESSIONS, RESOLUTION
from agentkv.report.ladder import DEFAULT_CHUNK, quantile
from agentkv.report.load import LOADS, Crossing, crossings
from agentkv.report.slo import meets_slo

if TYPE_CHECKING:
    from agentkv.report.assemble import Report
    from agentkv.sim.simulator import SimResult


@dataclass(slots=True, frozen=True)
class Column:
    key: str  # JSON key; ends in its unit
    label: str  # terminal and HTML header
    kind: str  # how to format: text, int, pct, s, ms, usd, num, bool
    meaning: str = ""


def _cols(*specs: tuple[str, ...]) -> dict[str, Column]:
    return {s[0]: Column(*s) for s in specs}


COLUMNS = _cols(
    ("lever", "lever", "text", "each lever added to the ones above it"),
    ("model", "model", "text", "catalog model (agentkv/data/models.toml)"),
    ("window_tokens", "window", "int", "the model's context window, tokens"),
    ("placement", "GPUs × weights", "text", "GPUs per replica (tensor parallel) and weight dtype: the fewest "
     "GPUs whose KV holds the longest request served"),
    ("in_window_requests_pct", "req in window %", "pct", "recorded requests whose prompt and reply fit the window"),
    ("in_window_tokens_pct", "tok in window %", "pct", "recorded input tokens of those requests"),
    ("kv_gib_median", "KV GiB/median ctx", "num", "bf16 KV of the median served prompt, every layer by its kind, "
     "tensor-parallel copies included"),
    ("contexts_per_gpu", "median ctx/GPU", "num", "median served prompts whose bf16 KV fits in one GPU's KV room"),
    ("gpus", "GPUs", "int", "replicas × tensor-parallel degree"),
    ("slo_met", "SLO met", "bool", "every part of the SLO met: TTFT, output speed, turn time at its percentile, "
     "and the agents' pace against the trace's own timing"),
    ("hit_pct", "hit %", "pct", "prompt tokens served from the prefix cache, any tier"),
    ("hit_hbm_pct", "HBM %", "pct", "prompt tokens served from GPU memory"),
    ("hit_dram_pct", "DRAM %", "pct", "prompt tokens served from host DRAM"),
    ("hit_disk_pct", "disk %", "pct", "prompt tokens served from local disk"),
    ("ttft_p50_s", "TTFT p50 s", "s", "time to first token, median"),
    ("ttft_p90_s", "TTFT p90 s", "s", "time to first token, 90th percentile"),
    ("ttft_p99_s", "TTFT p99 s", "s", "time to first token, 99th percentile"),
    ("tpot_p50_ms", "TPOT p50 ms", "ms", "time per output token after the first, median"),
    ("computed_tok_s_per_gpu", "computed tok/s/GPU", "num",
     "uncached prompt and output tokens the GPUs computed, per GPU-second billed"),
    ("cached_tok_s_per_gpu", "cached tok/s/GPU", "num", "prompt tokens served from the cache, per GPU-second billed"),
    ("util_pct", "busy %", "pct", "GPU time spent on steps over GPU time billed: the rest is idle capacity"),
    ("requests_rejected", "rejected", "int", "requests longer than one replica's whole GPU KV: never served"),
    ("usd_per_mtok", "$/Mtok all tokens", "usd", "fleet $ over every prompt and output token"),
    ("usd_per_mtok_low", "$/Mtok at low GPU rate", "usd",
     "the same fleet at the lowest public on-demand $/GPU-hour (marketplaces, long-tail clouds)"),
    ("usd_per_mtok_hyperscaler", "$/Mtok at hyperscaler rate", "usd",
     "the same fleet at a hyperscaler's on-demand $/GPU-hour"),
    ("usd_per_mtok_uncached_input", "$/Mtok uncached in", "usd",
     "prefill share of the fleet $ over prompt tokens not served from cache"),
    ("usd_per_mtok_cached_input", "$/Mtok cached in", "usd",
     "tier-transfer share of the fleet $ over prompt tokens served from cache"),
    ("usd_per_mtok_output", "$/Mtok output", "usd", "decode share of the fleet $ over output tokens"),
    ("usd_per_mtok_idle", "$/Mtok idle", "usd", "the fleet's idle GPU time, over all tokens: its own line, not "
     "folded into the parts"),
    ("sessions_per_replica", "sessions per replica", "num",
     "most concurrent agent sessions (as --concurrency sets them) one replica serves within the SLO "
     "(≥: met at the most load probed); past the trace's own sessions, copies of them are replayed"),
    ("sessions_per_gpu", "sessions per GPU", "num", "sessions per replica / GPUs per replica"),
    ("usd_per_session_hour", "$ per session-hour", "usd", "GPU $ per hour / sessions per GPU"),
    ("provider", "provider", "text", "API provider's price and prompt-caching schedule"),
    ("usd_per_mtok_full", "$/Mtok full", "usd",
     "a lever's fleet $/Mtok with every replica at its capacity (the least it costs at any load); an API's $/Mtok"),
    ("break_even_sessions", "break-even sessions", "num",
     "concurrent sessions one replica must carry for the cheapest lever to cost what this API does (— : never)"),
    ("usd_with_cache", "$ with caching", "usd", "the whole trace, prompt caching on"),
    ("usd_no_cache", "$ without caching", "usd", "the whole trace, prompt caching off"),
    ("saving_pct", "saving %", "pct", "1 − with / without caching"),
    ("requests_refused", "refused", "int", "requests larger than their model's window at this provider: not priced"),
    ("plan", "plan", "text", "flat-rate subscription"),
    ("usd_per_month", "$ per month", "usd", "the plan's price"),
    ("usd_per_session", "$ per session", "usd", "one top-level session of this trace at API prices"),
    ("sessions_per_month", "sessions/month to break even", "num", "plan price / $ per session"),
)


@dataclass(slots=True)
class View:
    key: str  # JSON key
    title: str
    columns: list[Column]
    rows: list[dict[str, object]]
    notes: list[str] = field(default_factory=list)


def views(rep: Report) -> list[View]:
    first = [model_view(rep)] if rep.candidates else []
    return [*first, same_fleet(rep), sized(rep), capacity(rep), cost_vs_load(rep), api_prices(rep),
            *([break_even(rep)] if rep.plans else [])]


def model_view(rep: Report) -> View:
    key = _slo_key(rep)
    rows = []
    for c in rep.candidates:
        s = c.sized
        cost = s.cost if s else None
        rows.append({"model": c.model, "window_tokens": c.window, "placement": f"{c.tp} × {c.weight_dtype}",
                     "in_window_requests_pct": 100 * (1 - c.fit.over_share),
                     "in_window_tokens_pct": 100 * (1 - c.fit.over_token_share), "kv_gib_median": c.kv_gib_median,
                     "contexts_per_gpu": c.contexts_per_gpu, "gpus": cost.gpus if cost else None,
                     key: s.ttft_slo_s if s else None, "slo_met": cost is not None,
                     "usd_per_mtok": cost.usd_per_mtok_blended if cost else None})
    notes = [f"each model serves the trace fitted to its own window (--over-window {rep.window.mode}): "
             + "; ".join(f"{c.model}: {c.fit.describe()}" for c in rep.candidates if c.fit.over),
             "GPUs, TTFT and $/Mtok: every KV lever on (the last rung), sized to the SLO at the offered load."]
    return View("models", "Model choice: which models take this traffic, and what each costs",
                _c("model", "window_tokens", "placement", "in_window_requests_pct", "in_window_tokens_pct",
                   "kv_gib_median", "contexts_per_gpu", "gpus", key, "slo_met", "usd_per_mtok"), rows, notes)


def _c(*keys: str) -> list[Column]:
    return [COLUMNS[k] for k in keys]


def _slo_key(rep: Report) -> str:
    q = rep.spec.slo_quantile
    key = f"ttft_p{q:g}_s".replace(".", "_")
    if key not in COLUMNS:
        COLUMNS[key] = Column(key, f"TTFT p{q:g} s", "s", f"time to first token, {q:g}th percentile")
    return key


def _hits(res: SimResult) -> dict[str, float]:
    prompt = max(float(res.prompt[res.served].sum()), 1.0)
    tiers = [float(res.cached[res.served, t].sum()) if res.cached.shape[1] > t else 0.0 for t in range(3)]
    return {"hit_pct": 100 * sum(tiers) / prompt,
            **{f"hit_{name}_pct": 100 * v / prompt for name, v in zip(("hbm", "dram", "disk"), tiers, strict=True)}}


def _latency(res: SimResult) -> dict[str, float]:
    return {"ttft_p50_s": quantile(res.ttft, 50), "ttft_p90_s": quantile(res.ttft, 90),
            "ttft_p99_s": quantile(res.ttft, 99), "tpot_p50_ms": 1e3 * quantile(res.tpot, 50)}


def same_fleet(rep: Report) -> View:
    rows = []
    for o in rep.outcomes:
        res = o.fleet_run
        assert res is not None
        gpus = res.config.replicas * res.config.deployment.tp
        billed, gpu_s = res.billed, max(res.billed_s * gpus, 1e-9)
        cached = float(res.cached[billed].sum())
        computed = float(res.prompt[billed].sum() + res.output[billed].sum()) - cached
        rows.append({"lever": o.rung.name, "gpus": gpus, **_hits(res), **_latency(res),
                     "computed_tok_s_per_gpu": computed / gpu_s, "cached_tok_s_per_gpu": cached / gpu_s,
                     "requests_rejected": int(res.rejected.sum()),
                     "slo_met": meets_slo(res, rep.spec)})
    cols = _c("lever", "gpus", "hit_pct", "hit_hbm_pct", "hit_dram_pct", "hit_disk_pct", "ttft_p50_s",
              "ttft_p90_s", "ttft_p99_s", "tpot_p50_ms", "computed_tok_s_per_gpu", "cached_tok_s_per_gpu",
              "requests_rejected", "slo_met")
    if _slo_key(rep) not in {c.key for c in cols}:
        cols.insert(9, COLUMNS[_slo_key(rep)])
        for row, o in zip(rows, rep.outcomes, strict=True):
            row[_slo_key(rep)] = quantile(o.fleet_run.ttft, rep.spec.slo_quantile)  # type: ignore[union-attr]
    return View("same_fleet", f"Same fleet: every lever on {plural(rep.fleet_gpus, 'GPU')} "
                f"({plural(rep.fleet_replicas, 'replica')}: {rep.fleet_chosen_by})", cols, rows,
                _rejected_notes(rep) + _tail_notes(rep))


P99_FACTOR = 3.0  # a p99 TTFT this many times the SLO percentile's is a tail the SLO does not see: flagged


def _tail_notes(rep: Report) -> list[str]:
    """One line naming every lever whose p99 TTFT departs from the SLO percentile's by over P99_FACTOR."""
    q, tails = rep.spec.slo_quantile, []
    for o in rep.outcomes:
        res = o.fleet_run
        assert res is not None
        at_q, p99 = quantile(res.ttft, q), quantile(res.ttft, 99)
        if q < 99 and p99 > P99_FACTOR * at_q:
            tails.append(f"{o.rung.name} {p99:.3g} s vs {at_q:.3g} s")
    if not tails:
        return []
    return [f"p99 TTFT over {P99_FACTOR:g}x the p{q:g}'s (one request in a hundred waits far longer than the SLO's "
            "percentile shows): " + "; ".join(tails)]


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _rejected_notes(rep: Report) -> list[str]:
    worst = max((int(o.fleet_run.rejected.sum()), o.rung.name) for o in rep.outcomes if o.fleet_run)
    if not worst[0]:
        return []
    return [f"rejected: requests whose prompt and reply exceed one replica's whole GPU KV (at {worst[1]}: "
            f"{worst[0]}); they are never served and left out of latency and cost. Smaller KV codecs fit them."]


def sized(rep: Report) -> View:
    key = _slo_key(rep)
    rows, notes = [], []
    r = rep.gpu_rates
    band = (r.low / r.typical, r.hyperscaler / r.typical)  # GPU-hours are bought at one rate: $ scale with it
    for o in rep.outcomes:
        s = o.sized
        c = s.cost
        rows.append({"lever": o.rung.name, "gpus": c.gpus if c else None, key: s.ttft_slo_s, "slo_met": c is not None,
                     "hit_pct": _hits(s.result)["hit_pct"] if s.result and c else None,
                     "usd_per_mtok": c.usd_per_mtok_blended if c else None,
                     "usd_per_mtok_low": c.usd_per_mtok_blended * band[0] if c else None,
                     "usd_per_mtok_hyperscaler": c.usd_per_mtok_blended * band[1] if c else None,
                     "util_pct": 100 * c.utilisation if c else None,
                     "usd_per_mtok_uncached_input": c.usd_per_mtok_input if c else None,
                     "usd_per_mtok_cached_input": c.usd_per_mtok_cached if c else None,
                     "usd_per_mtok_output": c.usd_per_mtok_output if c else None,
                     "usd_per_mtok_idle": c.usd_per_mtok_idle if c else None,
                     "requests_rejected": int(s.result.rejected.sum()) if s.result and c else None})
        if s.reason:
            notes.append(f"{o.rung.name}: SLO missed, no size or cost — {s.reason}.")
        if c and o.spec and (o.spec.prefill_share or o.spec.max_batched_tokens != DEFAULT_CHUNK):
            notes.append(f"{o.rung.name}: sized as {o.spec.fleet_words(s.replicas or 1)}: output speed sets its "
                         f"size, and with {DEFAULT_CHUNK}-token chunks beside the decodes it took more GPUs or no "
                         "fleet met it.")
    notes.append(f"GPU-hours at ${r.typical:g} (specialty GPU clouds); the band is the same fleet at ${r.low:g} "
                 f"(long-tail clouds) and ${r.hyperscaler:g} (hyperscalers) per GPU-hour, on demand.")
    notes.append("$/Mtok: the fleet's GPU-hours over the window its sessions start in (n / start rate), over the "
                 "tokens of the requests that arrived in it; the drain after it is not billed. Splits: "
                 "GPU time spent on prefill, tier transfers and decode, each over the tokens it served (uncached "
                 "prompt, cached prompt, output); idle GPU time is its own line, over all tokens.")
    return View("sized_to_slo", f"Sized to the SLO ({rep.spec.slo}): fewest GPUs and $/Mtok per lever",
                _c("lever", "gpus", key, "slo_met", "hit_pct", "usd_per_mtok", "usd_per_mtok_low",
                   "usd_per_mtok_hyperscaler", "util_pct", "usd_per_mtok_uncached_input",
                   "usd_per_mtok_cached_input", "usd_per_mtok_output", "usd_per_mtok_idle", "requests_rejected"),
                rows, notes)


def capacity(rep: Report) -> View:
    key = _slo_key(rep)
    tp = rep.spec.tp
    rows, notes = [], []
    for o in rep.outcomes:
        c = o.capacity
        per = c.sessions_per_replica
        rows.append({"lever": o.rung.name, "sessions_per_replica": per, "sessions_per_gpu": per / tp,
                     "usd_per_session_hour": rep.usd_per_gpu_hour * tp / per if per else None, key: c.ttft_slo_s,
                     "at_limit": c.at_limit})
        if c.undefined:
            notes.append(f"{o.rung.name}: capacity per replica not measured — {c.reason}.")
        elif c.reason:
            fleet = (f"; yet {plural(o.sized.cost.gpus, 'GPU')} together meet it (more replicas also bring more "
                     "cache)") if o.sized.cost else ""
            notes.append(f"{o.rung.name}: no load meets the SLO on one replica — {c.reason}{fleet}.")
        elif c.at_limit:
            notes.append(f"{o.rung.name}: still within the SLO at {MAX_SESSIONS:,.0f} concurrent sessions, the most "
                         "probed: a lower bound.")
    notes.append(f"capacity is the highest concurrency probed that met the SLO; the next probe, at most "
                 f"{RESOLUTION:g}× higher, missed it. Concurrency is as offered (session start rate × mean session "
                 "length), held from the first second: sessions start warm, already open as in the stationary state.")
    return View("capacity_per_gpu", f"Capacity per GPU: concurrent agent sessions one replica serves within the SLO "
                f"(${rep.usd_per_gpu_hour:g}/GPU-hour)",
                _c("lever", "sessions_per_replica", "sessions_per_gpu", "usd_per_session_hour", key), rows, notes)


def _load_key(n: int) -> str:
    key = f"usd_per_mtok_at_{n}_sessions"
    if key not in COLUMNS:
        COLUMNS[key] = Column(key, f"{n:,}", "usd", f"fleet $ per million tokens at {n:,} concurrent sessions: "
                              "⌈load / capacity⌉ replicas over the tokens that load sends")
    return key


STALE_DAYS = 180  # a price read longer ago than this is flagged


def stale(as_of: str, today: date) -> bool:
    """A price dated more than STALE_DAYS before `today`, or with no date a reader can check."""
    try:
        read = date.fromisoformat(as_of if len(as_of) > 7 else f"{as_of}-01")
    except ValueError:
        return True
    return (today - read).days > STALE_DAYS


def cost_vs_load(rep: Report, today: date | None = None) -> View:
    today = today or date.today()
    curves, keys = rep.curves, [_load_key(n) for n in LOADS]
    rows: list[dict[str, object]] = []
    for c in curves:
        rows.append({"lever": c.lever, "sessions_per_replica": c.per_replica or None, "usd_per_mtok_full": c.floor,
                     **{k: c.usd_per_mtok(n) for k, n in zip(keys, LOADS, strict=True)}})
    notes = []
    for x in crossings(curves, rep.model_apis):
        flag = " STALE" if stale(x.api.as_of, today) else ""
        rows.append({"lever": f"API {x.api.name}{flag}",
                     "usd_per_mtok_full": x.api.usd_per_mtok, "break_even_sessions": x.sessions,
                     **dict.fromkeys(keys, x.api.usd_per_mtok)})
        notes.append(_crossing_note(x) + (f" (prices as of {x.api.as_of or 'an unknown date'}: older than "
                                           f"{STALE_DAYS} days, check them)" if flag else ""))
    if not rep.model_apis:
        notes.append(f"no API in the price catalog sells {rep.spec.model} (prices.toml rows whose `serves` names "
                     "it), or the trace has no block ids to replay their caches on")
    notes.append("a lever's fleet at each load: ⌈load / its capacity per replica⌉ replicas (capacity view, one "
                 "replica simulated within the SLO), paid for the tokens that load sends at the rate measured at "
                 "capacity; the sized view simulates the fleet at the offered load. APIs: the trace at their "
                 "prices and caching, load-independent.")
    return View("cost_vs_load", f"Cost against load: $/Mtok at {LOADS[0]} to {LOADS[-1]:,} concurrent sessions "
                f"(columns), per lever and at the APIs that sell {rep.spec.model}",
                _c("lever", "sessions_per_replica", "usd_per_mtok_full", *keys, "break_even_sessions"), rows, notes)


def _crossing_note(x: Crossing) -> str:
    if x.sessions is None:
        floor = f"${x.floor:.3f}" if x.floor is not None else "no price (no lever meets the SLO)"
        return (f"{x.api.name}: ${x.api.usd_per_mtok:.3f}/Mtok on this traffic; self-hosting never matches it: "
                f"full replicas with the best levers cost {floor}/Mtok")
    return (f"{x.api.name}: ${x.api.usd_per_mtok:.3f}/Mtok; self-hosted with levers through {x.lever.lstrip('+')} "
            f"it breaks even at {x.sessions:.3g} concurrent sessions per replica")


def api_prices(rep: Report) -> View:
    rows = [{"provider": p.name, "hit_pct": 100 * p.hit_rate, "usd_with_cache": p.usd, "usd_no_cache": p.usd_no_cache,
             "saving_pct": 100 * p.saving, "usd_per_mtok": p.usd_per_mtok, "requests_refused": p.refused}
            for p in rep.providers]
    notes = [] if rep.providers else ["the trace has no block ids: provider caches cannot be replayed on it"]
    notes += [f"{p.name}: " + ", ".join(f"{m} ${u:,.2f}" for m, u in p.usd_by_model) for p in rep.providers
              if len(p.usd_by_model) > 1]
    notes += [f"{p.name}: no row for {', '.join(p.unmatched)}: priced at its default model" for p in rep.providers
              if p.unmatched]
    notes += [f"{p.name}: STALE, prices as of {p.as_of or 'an unknown date'}" for p in rep.providers
              if stale(p.as_of, date.today())]
    if rep.providers:
        notes.append("each request at its own model's list price, by exact version (the trace's model, or the provider's default), "
                     "long-context rates where the prompt passes the model's threshold; a request over the model's "
                     "window is refused: counted, not priced (prices.toml names each price's source and date)")
    return View("api_providers", "The same traffic at API providers (their prices, their prompt caching)",
                _c("provider", "hit_pct", "usd_with_cache", "usd_no_cache", "saving_pct", "usd_per_mtok",
                   "requests_refused"), rows, notes)


def break_even(rep: Report) -> View:
    rows = [{"plan": b.plan, "usd_per_month": b.usd_per_month, "provider": b.provider,
             "usd_per_session": b.usd_per_session, "sessions_per_month": b.sessions_per_month} for b in rep.plans]
    return View("break_even", "Flat-rate plan vs usage billing: sessions a month at which they cost the same",
                _c("plan", "usd_per_month", "provider", "usd_per_session", "sessions_per_month"), rows)


def cell(col: Column, row: dict[str, object]) -> str:
    """A row's value for `col` as the terminal and the HTML show it; a capacity the trace could not exhaust is a
    bound (≥ sessions, ≤ $)."""
    text = fmt(col, row.get(col.key))
    if row.get("at_limit") and text != "—":
        bound = {"sessions_per_replica": "≥ ", "sessions_per_gpu": "≥ ", "usd_per_session_hour": "≤ "}
        text = bound.get(col.key, "") + text
    return text


def fmt(col: Column, v: object) -> str:
    """A value as the terminal and the HTML show it."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "—"
    if col.kind == "bool":
        return "yes" if v else "MISSED"
    if col.kind == "text":
        return str(v)
    x = float(v)  # type: ignore[arg-type]
    if col.kind == "int":
        return f"{x:,.0f}"
    if col.kind == "pct":
        return f"{x:.1f}"
    if col.kind == "usd":  # the digits shown shrink as the value grows: decided on the value as rounded
        return f"{x:.3f}" if abs(round(x, 3)) < 1 else f"{x:.2f}" if abs(round(x, 2)) < 100 else f"{x:,.0f}"
    if col.kind in ("s", "num"):
        return f"{x:.2f}" if abs(round(x, 2)) < 10 else f"{x:,.1f}" if abs(round(x, 1)) < 1000 else f"{x:,.0f}"
    return f"{x:.1f}"  # ms
