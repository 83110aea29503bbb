"""Terminal tables (rich) for the CLI's human-readable output."""

from __future__ import annotations

import sys
from dataclasses import fields

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from agentkv.report.views import View, cell
from agentkv.workload.generator import GeneratorConfig, LogNormal, Quantiles, WindowClass
from agentkv.workload.stats import FitRow, TraceStats


def default_console() -> Console:
    """A terminal's own width; piped output gets room for the wide tables (rich would squeeze it to 80)."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def _num(x: float) -> str:
    return "-" if x != x else f"{x:,.0f}"


def _bytes(x: float) -> str:
    for unit, scale in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x:.0f} B"


def _pct(x: float) -> str:
    return "-" if x != x else f"{100 * x:.1f}%"


def print_generator(cfg: GeneratorConfig, console: Console | None = None) -> None:
    """The generator's parameters as fitted: what `trace generate --config` would reproduce."""
    console = console or default_console()
    t = Table(title=f"generator fitted to {cfg.fitted_from}", show_header=True, header_style="bold")
    t.add_column("parameter")
    t.add_column("value")
    for f in fields(cfg):
        if f.name not in ("fitted_from", "sessions", "seed"):
            t.add_row(f.name, _parameter(getattr(cfg, f.name)))
    console.print(t)


def _parameter(v: object) -> str:
    if isinstance(v, LogNormal):
        return f"log-normal: median {_parameter(v.median)}, sigma {v.sigma:.3g}"
    if isinstance(v, Quantiles):
        q = v.values
        return f"quantiles: min {_parameter(q[0])}, median {_parameter(q[len(q) // 2])}, max {_parameter(q[-1])}"
    if isinstance(v, WindowClass):
        return (f"{v.share:.0%} of requests, compact at {v.compact_at:,.0f} tokens, initial history "
                f"{_parameter(v.initial_history)}")
    if isinstance(v, tuple) and v and isinstance(v[0], tuple):
        return f"{len(v)} real session shapes (window, turns, history, step, compaction), resampled"
    if isinstance(v, tuple):
        return "; ".join(_parameter(x) for x in v) if v and isinstance(v[0], WindowClass) else \
            ", ".join(f"{x:.3g}" for x in v)  # type: ignore[union-attr]
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"
    return str(v)


def print_trace_stats(s: TraceStats, skipped: list[str], console: Console | None = None) -> None:
    console = console or default_console()
    t = Table(title=f"trace stats: {s.source}", show_header=True, header_style="bold")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_row("requests", f"{s.requests:,}")
    t.add_row("sessions (top-level + sub-agents)", f"{s.top_level_sessions:,} + {s.subagents:,}")
    t.add_row("requests inside sub-agents", f"{s.subagent_requests:,}")
    t.add_row("input tokens", f"{s.input_tokens:,}")
    t.add_row("output tokens", f"{s.output_tokens:,}")
    for name, d in (("input", s.input), ("output", s.output)):
        t.add_row(f"{name} p10 / p50 / p90 / p99 / max",
                  " / ".join(_num(d[k]) for k in ("p10", "p50", "p90", "p99", "max")))
        t.add_row(f"{name} mean", _num(d["mean"]))
    t.add_row("share of requests over 128k input", _pct(s.share_over_128k))
    t.add_row("prefix hit, infinite cache per session", _pct(s.hit_rate_per_session))
    t.add_row("prefix hit, infinite cache shared by all", _pct(s.hit_rate_global))
    t.add_row("arrivals", s.arrival)
    t.add_row("span (s)", _num(s.duration_s) + (" (every request at one instant: no rate)" if not s.duration_s else ""))
    t.add_row("offered input tok/s (all / uncached)", f"{_num(s.offered_input_tok_s)} / {_num(s.offered_uncached_tok_s)}")
    t.add_row("offered output tok/s", _num(s.offered_output_tok_s))
    ws = s.working_set_tokens
    t.add_row(f"working set per {s.working_set_window_s:g}s window, tokens p50 / p90 / max",
              " / ".join(_num(ws[k]) for k in ("p50", "p90", "max")))
    console.print(t)
    if skipped:
        console.print(f"[yellow]skipped {len(skipped)} bad records[/yellow]; first: {skipped[0]}")



def print_fit(rows: list[FitRow], real: str, console: Console | None = None) -> None:
    """The generated workload's context figures against the real trace and the dossier, as ratios."""
    console = console or default_console()
    t = Table(title=f"generator fit: generated / real ({real}) and / dossier", show_header=True, header_style="bold")
    for name in ("figure", "generated", "real", "generated / real", "dossier", "generated / dossier"):
        t.add_column(name, justify="left" if name == "figure" else "right")
    for r in rows:
        share = r.figure.startswith("share")
        show = _pct if share else _num
        t.add_row(r.figure.replace("_", " "), show(r.generated), show(r.real), f"{r.ratio(r.real):.2f}",
                  "—" if r.dossier != r.dossier else show(r.dossier),
                  "—" if r.dossier != r.dossier else f"{r.ratio(r.dossier):.2f}")
    console.print(t)


def print_sweep(rows: list[dict[str, object]], title: str, console: Console | None = None) -> None:
    """The sweep's headline columns; the CSV and JSON keep all of them."""
    console = console or default_console()
    tiers = [k.removeprefix("hit_rate_") for k in rows[0] if k.startswith("hit_rate_")] if rows else []
    t = Table(title=title, header_style="bold")
    for name in ["policy", "GPU", "hit", *(f"from {x}" for x in tiers), "recomputed", "demoted", "dropped", "s"]:
        t.add_column(name, justify="left" if name == "policy" else "right")
    for r in rows:
        t.add_row(
            str(r["policy"]), str(r["gpu_capacity"]), _pct(float(r["hit_rate"])),  # type: ignore[arg-type]
            *(_pct(float(r[f"hit_rate_{x}"])) for x in tiers),  # type: ignore[arg-type]
            f"{int(r['recomputed_tokens']) / 1e6:,.0f}M tok",  # type: ignore[call-overload]
            _bytes(float(r["demoted_GiB"]) * 2**30), _bytes(float(r["dropped_GiB"]) * 2**30),  # type: ignore[arg-type]
            f"{float(r['seconds']):.1f}",  # type: ignore[arg-type]
        )
    console.print(t)


def print_report(title: str, headline: list[str], settings: dict[str, str], views: list[View],
                 console: Console | None = None) -> None:
    """The headline first, then the settings, then every view with its notes (the HTML shows the same)."""
    console = console or default_console()
    console.print(f"[bold]{title}[/bold]")
    console.print(Panel("\n".join(headline), title="answer", title_align="left", border_style="blue"))
    for k, v in settings.items():
        console.print(f"[dim]{k}:[/dim] {v}", highlight=False)
    for v in views:
        t = Table(title=v.title, header_style="bold", title_justify="left")
        for c in v.columns:
            t.add_column(c.label, justify="left" if c.kind == "text" else "right", no_wrap=c.kind == "text")
        for row in v.rows:
            t.add_row(*(cell(c, row) for c in v.columns))
        console.print(t)
        for n in v.notes:
            console.print(f"  [dim]{n}[/dim]", highlight=False)
