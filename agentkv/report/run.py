"""`agentkv report` end to end: compute the report, then write report.html and report.json and print it."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, fields
from typing import Any

from agentkv import __version__
from agentkv.report.assemble import Report, build_report
from agentkv.report.budget import BUDGET_S, choose_scope
from agentkv.report.headline import headline
from agentkv.report.ladder import DeploymentSpec
from agentkv.report.load import crossings
from agentkv.report.progress import progress_bar
from agentkv.report.views import COLUMNS, View, views
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.trace import Trace

TITLE = "agentkv report: what each KV-cache lever buys on this agentic traffic"


def run_report(trace: Trace, spec: DeploymentSpec, arrival: ArrivalModel, price_table: dict[str, Any],
               out: str = "report.html", replicas: int | None = None, workers: int = 2,
               print_json: bool = False, over_window: str = "compact", candidates: tuple[str, ...] = (),
               model_choice: str = "", sample_size: int | None = None, ray: str | None = None,
               budget_s: float = BUDGET_S) -> Report:
    """Compute, write `out` and `<out>.json` beside it, print the report (or its JSON). `sample_size` top-level
    sessions are simulated (default: the whole trace if its projected time fits `budget_s` or on Ray, else
    SAMPLE_SESSIONS; 0: the whole trace)."""
    scope = choose_scope(trace, spec, arrival, budget_s, workers) if ray is None else None
    if sample_size is None and scope is not None:
        sample_size = scope.sample_size
        print(f"agentkv report: {scope.describe()}", file=sys.stderr)
    sample_size = sample_size or 0
    with progress_bar(10 + len(candidates), "report", quiet=print_json) as step:
        rep = build_report(trace, spec, arrival, price_table, replicas, workers, step, sample_size or trace.n_sessions,
                           over_window=over_window, candidates=candidates, model_choice=model_choice, ray=ray)
    vs = views(rep)
    lines = headline(rep)
    info = settings(rep)
    from agentkv.report.figures import figures
    from agentkv.report.html import write_html

    write_html(out, TITLE, lines, info, vs, figures({v.key: v for v in vs}, spec.slo_ttft_s))
    doc = document(rep, lines, info, vs)
    if scope is not None:  # what the budget projected for the whole trace, beside what the report took
        doc["numbers"].update(projected_whole_s=scope.projected_s, probe_cpu_s_per_request=scope.probe_s_per_request)
    json_path = os.path.splitext(out)[0] + ".json"
    with open(json_path, "w") as f:
        json.dump(doc, f, indent=1, allow_nan=False)
    if print_json:
        print(json.dumps(doc, indent=1, allow_nan=False))
    else:
        from agentkv.report.tables import print_report

        print_report(TITLE, lines, info, vs)
        print(f"wrote {out} (self-contained) and {json_path} in {rep.wall_s:.0f} s")
    return rep


def settings(rep: Report) -> dict[str, str]:
    s = rep.spec
    fits = ", ".join(f"{f.codec} {f.contexts_per_gpu:.1f}" for f in rep.kv_fit)
    loads = ", ".join(f"{t.source} {t.seconds:.2f} s" for t in rep.kv_load)
    return {
        "traffic": f"{rep.trace}: {rep.top_sessions} sessions, {rep.requests:,} requests, "
                   f"{rep.input_tokens:,} input tokens; median context {rep.median_context:,} tokens",
        "arrivals": f"{rep.arrival}; {rep.offered_sessions:.1f} concurrent sessions offered; open at once in the "
                    f"billed window: {rep.open_sessions[0]:.1f} on average, {rep.open_sessions[1]} at peak",
        "simulated": rep.measured_on,
        "deployment": f"{s.model} on {rep.hardware} (tp={s.tp}, weights {s.weight_dtype}), router {s.router}, "
                      f"${rep.usd_per_gpu_hour:g}/GPU-hour",
        "context window": rep.window.describe(),
        "SLO": s.slo,
        "deployment mode by lever (the cheapest meeting the SLO)": ", ".join(
            f"{o.rung.name.lstrip('+')} {o.spec.mode}" for o in rep.outcomes if o.spec),
        "median contexts per GPU by KV codec": fits,
        "bf16 KV of a median context onto the GPU": loads,
    }


def document(rep: Report, lines: list[str], info: dict[str, str], vs: list[View]) -> dict[str, Any]:
    """report.json: the same views with the same columns; values are numbers in the unit their key names."""
    used = {c.key for v in vs for c in v.columns}
    return {
        "agentkv_version": __version__,
        "headline": lines,
        "settings": info,
        "numbers": {"offered_concurrent_sessions": rep.offered_sessions, "open_sessions_mean": rep.open_sessions[0],
                    "open_sessions_peak": rep.open_sessions[1], "fleet_gpus": rep.fleet_gpus,
                    "usd_per_gpu_hour": rep.usd_per_gpu_hour, "usd_per_gpu_hour_low": rep.gpu_rates.low,
                    "usd_per_gpu_hour_hyperscaler": rep.gpu_rates.hyperscaler, "slo_ttft_s": rep.spec.slo_ttft_s,
                    "slo_quantile": rep.spec.slo_quantile, "median_context_tokens": rep.median_context,
                    "requests": rep.requests, "input_tokens": rep.input_tokens, "wall_s": rep.wall_s},
        "slo": {f.name: getattr(rep.spec, f.name) for f in fields(rep.spec) if f.name.startswith("slo_")},
        "api_break_even": [{"api": x.api.name, "api_usd_per_mtok": x.api.usd_per_mtok, "as_of": x.api.as_of,
                        "lever": x.lever, "sessions_per_replica": x.sessions, "full_replica_usd_per_mtok": x.floor}
                       for x in crossings(rep.curves, rep.model_apis)],
        "columns": {k: {"label": c.label, "meaning": c.meaning} for k, c in COLUMNS.items() if k in used},
        **{v.key: {"title": v.title, "rows": [_finite(row) for row in v.rows], "notes": v.notes} for v in vs},
        "context_window": {**asdict(rep.window), "served": rep.window.served},
        "kv_codec_fit": [asdict(f) for f in rep.kv_fit],
        "kv_load_seconds": [asdict(t) for t in rep.kv_load],
        "simulation_jobs": [asdict(j) for j in rep.jobs],  # what ran where: CPU seconds per job, for projections
    }


def _finite(row: dict[str, object]) -> dict[str, object]:
    """NaN (a percentile of nothing served) is not JSON: null, as for figures that do not apply."""
    return {k: None if isinstance(v, float) and v != v else v for k, v in row.items()}
