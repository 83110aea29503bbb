"""`agentkv cache sweep`: hit rate per policy and capacity, with Belady and infinite references."""

from __future__ import annotations

import argparse
import json

from agentkv.cli_errors import check_output
from agentkv.commands import flags


def add_parser(sub: argparse._SubParsersAction) -> None:
    cache = flags.command_group(sub, "cache", "replay traces through the KV cache policy core")
    sw = cache.add_parser("sweep", help="hit rate per policy and capacity, with Belady and infinite references")
    flags.add_trace_args(sw, optional=True)
    flags.add_arrival_args(sw)
    sw.add_argument("--policy", default="lru,lfu,cost,agent",
                    help="comma-separated: lru, lfu, cost, agent (online); belady, infinite (references)")
    sw.add_argument("--capacity", default="128k,256k,512k,1M",
                    help="GPU tier sizes, tokens (256k) or bytes (16GiB); comma-separated")
    sw.add_argument("--tiers", help="lower tiers: dram=8x (times the GPU tier) or dram=2M / dram=64GiB, disk=...")
    sw.add_argument("--write-through", action="store_true", help="copy new blocks to the next tier at once")
    sw.add_argument("--model", default="llama-3.1-8b", help="model whose KV shape sizes byte capacities")
    sw.add_argument("--models", help="your own models.toml")
    sw.add_argument("--codec", default="bf16", help="KV codec: bf16, fp8, int8, int4")
    sw.add_argument("--out", default="sweep", help="output folder for sweep.csv, sweep.json, sweep.png")
    sw.add_argument("--json", action="store_true", help="print the results as JSON")
    flags.add_ray_arg(sw)
    sw.set_defaults(run=cmd_cache_sweep)


def cmd_cache_sweep(args: argparse.Namespace) -> int:
    import os

    from agentkv.catalog import model
    from agentkv.evaluate.sweep import (
        capacities_arg,
        parse_lower_tiers,
        policies_arg,
        rows,
        summary_lines,
        sweep,
        write_csv,
        write_json,
    )
    from agentkv.kvcache.sizing import codec
    from agentkv.report.progress import progress_bar
    from agentkv.report.tables import print_sweep

    check_output(args.out, folder=True)
    if args.ray is not None:
        flags.check_ray()
    policies = policies_arg(args.policy)
    capacities = capacities_arg(args.capacity)  # every flag before the trace loads: a typo costs no load
    lower = parse_lower_tiers(args.tiers)
    m, c = model(args.model, args.models), codec(args.codec)
    trace = flags.needs_block_ids(flags.load_or_generate(args), "cache sweep", args.paths)
    arrival = flags.arrival_from_args(args, trace)
    total = len(capacities) * len(set(policies) - {"infinite"} | {"belady"})
    with progress_bar(total, "cache sweep", quiet=args.json) as step:
        points, infinite = sweep(trace, policies, capacities, lower, arrival, m, c, args.write_through, step,
                                 ray=args.ray)
    meta = {"trace": trace.source, "arrival": arrival.describe(), "model": m.name, "codec": c.name,
            "tiers": args.tiers or "gpu only", "write_through": args.write_through}
    write_csv(points, os.path.join(args.out, "sweep.csv"))
    write_json(points, infinite, meta, os.path.join(args.out, "sweep.json"))
    from agentkv.report.plots import hit_rate_vs_capacity

    title = f"{trace.source}: {arrival.describe()}; {m.name} {c.name}; tiers: {args.tiers or 'gpu only'}"
    hit_rate_vs_capacity(points, infinite, os.path.join(args.out, "sweep.png"), title)
    if args.json:
        print(json.dumps({**meta, "infinite_hit_rate": infinite, "points": rows(points)}, indent=1))
    else:
        print_sweep(rows(points), f"cache sweep: {title}")
        for line in summary_lines(points, infinite):
            print(line)
        print(f"wrote {args.out}/sweep.csv, sweep.json, sweep.png")
    return 0
