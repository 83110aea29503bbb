"""`agentkv report`: what to deploy for this traffic, every KV-cache lever on one fleet sized to the SLO."""

from __future__ import annotations

import argparse
import os

from agentkv.cli_errors import UsageError, check_output, positive
from agentkv.commands import flags
from agentkv.report.budget import BUDGET_S
from agentkv.report.capacity import SAMPLE_SESSIONS
from agentkv.workload.window import OVER_WINDOW

REPORT_SESSIONS = 40  # the default report's synthetic workload: big enough to be agentic, quick enough to run


def add_parser(sub: argparse._SubParsersAction) -> None:
    rep = sub.add_parser("report", help="what to deploy for this traffic: every KV-cache lever on one fleet, sized "
                                        "to the TTFT SLO, and per GPU (no PATH: the built-in synthetic agentic "
                                        "workload)")
    flags.add_trace_args(rep, optional=True, default_sessions=REPORT_SESSIONS)
    flags.add_arrival_args(rep)
    rep.add_argument("--deployment", default="",
                     help="key=value,... over the defaults: hardware=h200, model: the first of llama-3.1-8b, "
                          "qwen3-coder-30b-a3b, deepseek-v4-flash, llama-4-scout whose context window holds every "
                          "request, on the fewest GPUs whose KV holds the longest (tp=1, weight_dtype=bf16 for a model "
                          "you name), router=prefix-aware, dram_gb=0 (half the host's), disk_gb=2000, "
                          "slo_ttft_s=20, slo_quantile=90 (the percentile every bound is at), slo_output_tps=30 "
                          "(per-request output speed; or slo_tpot_ms, which replaces it), slo_e2e_s=0 (turn time; "
                          "0: none), slo_slowdown=1.2 (agents' pace against the trace's timing; 0: none)")
    rep.add_argument("--hardware-file", help="your own hardware.toml")
    rep.add_argument("--models", help="your own models.toml")
    rep.add_argument("--prices", help="your own prices.toml")
    rep.add_argument("--replicas", type=positive(int),
                     help="replicas of the same-fleet view (default: what all levers together need for the SLO)")
    rep.add_argument("--workers", type=positive(int), default=2,
                     help="processes simulating levers in parallel (default 2; with --ray and no address: the "
                          "CPUs of the local Ray cluster)")
    rep.add_argument("--sample-sessions", type=int,
                     help="size and run the same fleet on an evenly spaced sample of this many top-level sessions "
                          "(default: the whole trace when its projected time fits --budget, else "
                          f"{SAMPLE_SESSIONS}; with --ray: the whole trace; 0: the whole trace)")
    rep.add_argument("--budget", type=positive(float), default=BUDGET_S,
                     help="seconds the report may take on this machine: the whole trace is simulated when its "
                          f"projected time fits, else a sample, and the projection is printed (default {BUDGET_S:g})")
    flags.add_ray_arg(rep)
    rep.add_argument("--out", default="report.html",
                     help="self-contained HTML report path; the JSON goes beside it (default report.html)")
    rep.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    rep.add_argument("--over-window", choices=OVER_WINDOW, default="compact",
                     help="what a request over the model's context window becomes: compact (the client summarises "
                          "the conversation and goes on; default), reject (refused, its session ends), truncate "
                          "(oldest tokens cut); counted in the report")
    rep.add_argument("--candidates", default="",
                     help="comma-separated catalog models for the model view, each fitted to its window, placed "
                          "and sized to the SLO with every lever on, e.g. deepseek-v4-flash,qwen3-coder-480b-a35b "
                          "(default: none, no model view)")
    rep.set_defaults(run=cmd_report)


def deployment_spec(text: str, hardware_file: str | None, models_file: str | None):
    from dataclasses import fields

    from agentkv.report.ladder import DeploymentSpec

    types = {f.name: f.type for f in fields(DeploymentSpec) if not f.name.endswith("_file")}
    values: dict[str, object] = {"hardware_file": hardware_file, "models_file": models_file}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = (x.strip() for x in part.partition("="))
        if key not in types:
            raise UsageError(f"--deployment: unknown setting {key!r} (settings: {', '.join(types)})")
        if not eq or not value:
            raise UsageError(f"--deployment: setting {key!r} has no value (write {key}=VALUE)")
        kind = types[key]
        if kind == "bool":
            if value.lower() not in ("true", "false"):
                raise UsageError(f"--deployment: {key}={value!r} must be true or false")
            values[key] = value.lower() == "true"
            continue
        try:
            values[key] = int(value) if kind == "int" else float(value) if kind == "float" else value
        except ValueError:
            raise UsageError(f"--deployment: {key}={value!r} is not {'an integer' if kind == 'int' else 'a number'}") \
                from None
    try:
        return DeploymentSpec(**values)  # type: ignore[arg-type]
    except ValueError as e:
        raise UsageError(f"--deployment: {e}") from None


def cmd_report(args: argparse.Namespace) -> int:
    from agentkv.catalog import models, prices
    from agentkv.report.run import run_report

    check_output(args.out)
    check_output(os.path.splitext(args.out)[0] + ".json", "--out (its JSON beside it)")
    if args.ray is not None:
        flags.check_ray()
    if args.sample_sessions is not None and args.sample_sessions < 0:
        raise UsageError(f"--sample-sessions must be >= 0, got {args.sample_sessions}")
    if not args.paths and not args.gen_sessions:
        args.gen_sessions = REPORT_SESSIONS
    from agentkv.catalog import hardware
    from agentkv.report.models import choose_model
    from agentkv.report.progress import progress_bar

    spec = deployment_spec(args.deployment, args.hardware_file, args.models)
    candidates = tuple(dict.fromkeys(c.strip() for c in args.candidates.split(",") if c.strip()))
    known = models(args.models)
    for name in candidates:
        if name not in known:
            raise UsageError(f"--candidates: unknown model '{name}' (known: {', '.join(sorted(known))})")
    if spec.model not in known:
        raise UsageError(f"--deployment: unknown model '{spec.model}' (known: {', '.join(sorted(known))})")
    hardware(spec.hardware, spec.hardware_file)  # every name checked before the trace loads
    price_table = prices(args.prices)
    named = {p.partition("=")[0].strip() for p in args.deployment.split(",")}
    with progress_bar(None, "report", quiet=args.json) as step:  # a large trace takes up to a minute to read
        step(f"loading {', '.join(args.paths)}" if args.paths else f"generating {args.gen_sessions} sessions")
        trace = flags.needs_block_ids(flags.load_or_generate(args), "report", args.paths)
        arrival = flags.arrival_from_args(args, trace)
        spec, why = choose_model(trace, spec, named)
    run_report(trace, spec, arrival, price_table, out=args.out, replicas=args.replicas, workers=args.workers,
               print_json=args.json, over_window=args.over_window, candidates=candidates, model_choice=why,
               sample_size=args.sample_sessions, ray=args.ray, budget_s=args.budget)
    return 0
