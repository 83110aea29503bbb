"""What a replay measured: per-request records (CSV), the summary (table, JSON) and the prediction beside it."""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
from rich.console import Console
from rich.table import Table

from agentkv.replay.runner import Record

QUANTILES = (50, 90, 99)


@dataclass(slots=True)
class Summary:
    planned: int  # requests the plan holds
    requests: int  # of those, sent (the rest never were: the run was stopped, or failed, before their turn)
    ok: int
    errors: dict[str, int]  # kind -> count
    without_usage: int  # whole replies that reported no usage (not counted in the cached share)
    count_mismatches: int  # replies whose prompt_tokens differ from the planned count: block boundaries moved
    prompt_tokens: int
    cached_tokens: int
    cached_per_tier: dict[str, int]
    completion_tokens: int
    duration_s: float
    ttft_s: dict[str, float]
    tpot_s: dict[str, float]
    e2e_s: dict[str, float]
    predicted_cached_tokens: int = -1
    predicted_per_tier: dict[str, int] = field(default_factory=dict)
    prediction: str = ""  # how it was made
    per_replica: dict[str, dict[str, int]] = field(default_factory=dict)  # behind several replicas (per_replica)
    meta: dict[str, object] = field(default_factory=dict)

    @property
    def not_sent(self) -> int:
        return self.planned - self.requests

    @property
    def cached_share(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else float("nan")

    @property
    def predicted_share(self) -> float:
        if self.predicted_cached_tokens < 0 or not self.prompt_tokens:
            return float("nan")
        return self.predicted_cached_tokens / self.prompt_tokens

    def to_dict(self) -> dict[str, object]:
        """Plain JSON: what was not measured is null, never NaN."""
        d = asdict(self)
        d.update(not_sent=self.not_sent, cached_share=self.cached_share, predicted_share=self.predicted_share,
                 input_tok_s=self.prompt_tokens / self.duration_s if self.duration_s else 0.0,
                 output_tok_s=self.completion_tokens / self.duration_s if self.duration_s else 0.0)
        return _no_nan(d)


def _no_nan(x: object) -> object:
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    return None if isinstance(x, float) and x != x else x


def tpot(r: Record) -> float:
    o = r.outcome
    return (o.e2e - o.ttft) / (o.completion_tokens - 1) if o.completion_tokens > 1 else float("nan")


def measured(r: Record) -> bool:
    """A whole reply with usage: it counts toward the cached share."""
    return not r.outcome.error and r.outcome.prompt_tokens >= 0 and r.outcome.cached_tokens >= 0


def summarize(records: list[Record], duration_s: float, planned: int) -> Summary:
    ok = [r for r in records if not r.outcome.error]
    used = [r for r in ok if measured(r)]
    tiers: Counter[str] = Counter()
    predicted_tiers: Counter[str] = Counter()
    for r in used:
        tiers.update(r.outcome.cached_per_tier)
        predicted_tiers.update(r.predicted_per_tier)
    predicted = [r.predicted_cached for r in used]
    return Summary(
        planned=planned,
        requests=len(records),
        ok=len(ok),
        errors=dict(sorted(Counter(r.outcome.error for r in records if r.outcome.error).items())),
        without_usage=len(ok) - len(used),
        count_mismatches=sum(r.outcome.prompt_tokens != r.prompt_planned for r in used),
        prompt_tokens=sum(r.outcome.prompt_tokens for r in used),
        cached_tokens=sum(r.outcome.cached_tokens for r in used),
        cached_per_tier=dict(tiers),
        completion_tokens=sum(max(r.outcome.completion_tokens, 0) for r in ok),
        duration_s=duration_s,
        ttft_s=_quantiles([r.outcome.ttft for r in ok]),
        tpot_s=_quantiles([tpot(r) for r in ok]),
        e2e_s=_quantiles([r.outcome.e2e for r in ok]),
        predicted_cached_tokens=sum(predicted) if used and min(predicted) >= 0 else -1,
        predicted_per_tier=dict(predicted_tiers),
        per_replica=per_replica(used),
    )


def per_replica(used: list[Record]) -> dict[str, dict[str, int]]:
    """Per replica that answered: its requests, cached tokens measured and predicted, and how many of its
    requests the router was predicted to send it (predicted replica k is the replica most of k's went to)."""
    if len({r.outcome.replica for r in used}) < 2:
        return {}
    votes: dict[int, Counter[str]] = {}
    for r in used:
        votes.setdefault(r.predicted_replica, Counter())[r.outcome.replica] += 1
    named = {k: c.most_common(1)[0][0] for k, c in votes.items()}
    out: dict[str, dict[str, int]] = {}
    for r in used:
        row = out.setdefault(r.outcome.replica, dict(requests=0, cached_tokens=0, predicted_cached_tokens=0,
                                                     routed_as_predicted=0))
        row["requests"] += 1
        row["cached_tokens"] += r.outcome.cached_tokens
        row["predicted_cached_tokens"] += max(r.predicted_cached, 0)
        row["routed_as_predicted"] += named.get(r.predicted_replica) == r.outcome.replica
    return dict(sorted(out.items()))


def _quantiles(xs: list[float]) -> dict[str, float]:
    a = np.asarray([x for x in xs if x == x], dtype=np.float64)
    if not len(a):
        return {f"p{q}": float("nan") for q in QUANTILES} | {"mean": float("nan")}
    return {f"p{q}": float(np.percentile(a, q)) for q in QUANTILES} | {"mean": float(a.mean())}


def print_summary(s: Summary, title: str, console: Console | None = None) -> None:
    console = console or Console(width=140)
    t = Table(title=title, show_header=True, header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("requests (ok / sent / planned)", f"{s.ok:,} / {s.requests:,} / {s.planned:,}")
    if s.not_sent:
        t.add_row("requests never sent", f"{s.not_sent:,}")
    t.add_row("errors by kind", ", ".join(f"{k} {v}" for k, v in s.errors.items()) or "none")
    if s.without_usage or s.count_mismatches:
        t.add_row("replies without usage / prompt counts off plan", f"{s.without_usage} / {s.count_mismatches}")
    t.add_row("prompt tokens (cached)", f"{s.prompt_tokens:,} ({s.cached_tokens:,})")
    t.add_row("cached-token share, measured", _pct(s.cached_share))
    if s.cached_per_tier:
        t.add_row("  by tier", _by_tier(s.cached_per_tier, s.prompt_tokens))
    if s.predicted_cached_tokens >= 0:
        t.add_row(f"cached-token share, predicted ({s.prediction})", _pct(s.predicted_share))
        if len(s.predicted_per_tier) > 1 or len(s.cached_per_tier) > 1:
            t.add_row("  by tier", _by_tier(s.predicted_per_tier, s.prompt_tokens))
        t.add_row("measured − predicted", f"{100 * (s.cached_share - s.predicted_share):+.2f} points")
    for name, row in s.per_replica.items():
        t.add_row(f"replica {name}: requests (routed as predicted)", f"{row['requests']} ({row['routed_as_predicted']})")
        t.add_row(f"replica {name}: cached tokens measured / predicted",
                  f"{row['cached_tokens']:,} / {row['predicted_cached_tokens']:,}")
    for name, q, scale, unit in (("TTFT", s.ttft_s, 1, "s"), ("TPOT", s.tpot_s, 1e3, "ms"), ("E2E", s.e2e_s, 1, "s")):
        t.add_row(f"{name} p50 / p90 / p99 ({unit})", " / ".join(_num(q[f"p{k}"] * scale) for k in QUANTILES))
    d = s.to_dict()
    t.add_row("input / output tokens per s", f"{d['input_tok_s']:,.0f} / {d['output_tok_s']:,.1f}")
    t.add_row("duration (s)", f"{s.duration_s:,.1f}")
    console.print(t)


def _by_tier(tokens: dict[str, int], total: int) -> str:
    return ", ".join(f"{k} {_pct(v / total)}" for k, v in tokens.items())


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.2f}%"


def _num(x: float) -> str:
    return "-" if x != x else f"{x:.3g}"


FIELDS = ("request", "session", "turn", "sent_s", "prompt_planned", "prompt_tokens", "cached_tokens",
          "predicted_cached", "max_tokens", "completion_tokens", "ttft_s", "tpot_s", "e2e_s", "status", "error",
          "detail", "cached_per_tier", "predicted_per_tier", "replica", "predicted_replica")


def write_csv(records: list[Record], path: str) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FIELDS)
        for r in records:
            o = r.outcome
            w.writerow([r.request, r.session, r.turn, f"{r.sent:.4f}", r.prompt_planned, o.prompt_tokens,
                        o.cached_tokens, r.predicted_cached, r.max_tokens, o.completion_tokens, f"{o.ttft:.4f}",
                        f"{tpot(r):.5f}", f"{o.e2e:.4f}", o.status, o.error, o.detail,
                        json.dumps(o.cached_per_tier) if o.cached_per_tier else "",
                        json.dumps(r.predicted_per_tier) if r.predicted_per_tier else "", o.replica,
                        r.predicted_replica])


def write_json(s: Summary, path: str) -> None:
    with open(path, "w") as f:
        json.dump(s.to_dict(), f, indent=1, default=float)
