"""`agentkv trace stats | generate | convert`: load, convert, generate and describe workload traces."""

from __future__ import annotations

import argparse
import json

from agentkv.cli_errors import check_output, positive
from agentkv.commands import flags


def add_parser(sub: argparse._SubParsersAction) -> None:
    trace = flags.command_group(sub, "trace", "load, convert, generate and describe workload traces")

    stats = trace.add_parser("stats", help="what a trace asks of a KV cache (no PATH: the built-in workload)")
    flags.add_trace_args(stats, optional=True)
    flags.add_arrival_args(stats)
    stats.add_argument("--window", type=positive(float), default=300.0, help="working-set window in seconds (default 300)")
    stats.add_argument("--json", action="store_true", help="print machine-readable JSON")
    stats.set_defaults(run=cmd_trace_stats)

    gen = trace.add_parser("generate", help="write a synthetic agentic trace (.npz)")
    flags.add_generator_args(gen)
    gen.add_argument("--out", required=True, help="output .npz path")
    gen.add_argument("--config-out", help="also write the generator parameters as JSON")
    gen.set_defaults(run=cmd_trace_generate)

    conv = trace.add_parser("convert", help="load any supported trace and write the canonical .npz")
    flags.add_trace_args(conv, optional=False)
    conv.add_argument("--out", required=True, help="output .npz path")
    conv.set_defaults(run=cmd_trace_convert)


def cmd_trace_stats(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from agentkv.report.progress import progress_bar
    from agentkv.workload.stats import fit_figures, trace_stats

    with progress_bar(None, "trace stats", quiet=args.json) as step:
        step(f"loading {len(args.paths)} path(s)" if args.paths else "generating the workload"
             + (f" fitted to {args.fit}" if args.fit else ""))
        trace, cfg = flags.load_or_generate_with_config(args)
        step(f"measuring {trace.n_requests:,} requests")
        stats = trace_stats(trace, flags.arrival_from_args(args, trace), window=args.window)
        generator = cfg if cfg is not None and args.fit else None
        fit = None
        if args.fit and not args.paths:  # the generator fitted to a real trace: how close it came
            from agentkv.workload.load import load_trace

            step(f"comparing with {args.fit}")
            fit = fit_figures(trace, load_trace(args.fit))
    if args.json:
        rows = [{k: None if v != v else v for k, v in asdict(r).items()} for r in fit or []]  # NaN: not stated
        print(json.dumps(stats.to_dict() | ({"generator": json.loads(generator.to_json())} if generator else {})
                         | ({"fit": rows} if rows else {}), indent=1))
    else:
        from agentkv.report.tables import print_fit, print_generator, print_trace_stats

        if generator:
            print_generator(generator)
        print_trace_stats(stats, trace.skipped)
        if fit:
            print_fit(fit, args.fit)
    return 0


def cmd_trace_generate(args: argparse.Namespace) -> int:
    from agentkv.report.progress import progress_bar
    from agentkv.workload.formats import canonical
    from agentkv.workload.generator import generate

    check_output(args.out)
    with progress_bar(None, "trace generate") as step:
        step("fitting the generator to " + args.fit if args.fit and not args.config else "checking the size")
        cfg = flags.generator_config(args)
        step(f"generating {cfg.sessions:,} sessions")
        trace = generate(cfg)
        step(f"writing {args.out}")
        canonical.save(trace, args.out)
    if args.config_out:
        with open(args.config_out, "w") as f:
            f.write(cfg.to_json())
    top = int((trace.session_parent < 0).sum())
    print(f"wrote {args.out}: {top} sessions and {trace.n_sessions - top} sub-agents they started "
          f"({trace.n_sessions} in all), {trace.n_requests:,} requests, {int(trace.input_tokens.sum()):,} input tokens")
    return 0


def cmd_trace_convert(args: argparse.Namespace) -> int:
    from agentkv.workload.formats import canonical
    from agentkv.workload.load import load_trace

    check_output(args.out)
    trace = load_trace(args.paths, skip_bad=args.skip_bad, tokenizer=args.tokenizer, block_size=args.block_size)
    canonical.save(trace, args.out)
    print(f"wrote {args.out}: {trace.n_sessions} sessions, {trace.n_requests} requests"
          + (f", {len(trace.skipped)} bad records skipped" if trace.skipped else ""))
    return 0
