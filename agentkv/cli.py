"""The `agentkv` command. Each subcommand parses its flags here and calls into the package; heavy imports
(torch, matplotlib) happen inside the commands that need them, so `agentkv trace stats` starts fast."""

from __future__ import annotations

import argparse
import json
import sys

from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.generator import GeneratorConfig
from agentkv.workload.trace import Trace

REPORT_SESSIONS = 40  # the default report's synthetic workload: big enough to be agentic, quick enough to run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"agentkv: error: {e}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="agentkv", description=__doc__)
    sub = p.add_subparsers(title="commands")
    trace = sub.add_parser("trace", help="load, convert, generate and describe workload traces").add_subparsers()

    stats = trace.add_parser("stats", help="what a trace asks of a KV cache (no PATH: the built-in workload)")
    add_trace_args(stats, optional=True)
    add_arrival_args(stats)
    stats.add_argument("--window", type=float, default=300.0, help="working-set window in seconds (default 300)")
    stats.add_argument("--json", action="store_true", help="print machine-readable JSON")
    stats.set_defaults(run=cmd_trace_stats)

    gen = trace.add_parser("generate", help="write a synthetic agentic trace (.npz)")
    add_generator_args(gen)
    gen.add_argument("--out", required=True, help="output .npz path")
    gen.add_argument("--config-out", help="also write the generator parameters as JSON")
    gen.set_defaults(run=cmd_trace_generate)

    conv = trace.add_parser("convert", help="load any supported trace and write the canonical .npz")
    add_trace_args(conv, optional=False)
    conv.add_argument("--out", required=True, help="output .npz path")
    conv.set_defaults(run=cmd_trace_convert)

    cache = sub.add_parser("cache", help="replay traces through the KV cache policy core").add_subparsers()
    sw = cache.add_parser("sweep", help="hit rate per policy and capacity, with Belady and infinite references")
    add_trace_args(sw, optional=True)
    add_arrival_args(sw)
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
    sw.set_defaults(run=cmd_cache_sweep)

    from agentkv.replay.cli import add_replay_parser

    add_replay_parser(sub)

    rep = sub.add_parser("report", help="the mitigation ladder: hit rate, latency, GPUs and $/Mtok per lever "
                                        "(no TRACE: the built-in synthetic agentic workload)")
    add_trace_args(rep, optional=True)
    add_arrival_args(rep)
    rep.add_argument("--deployment", default="",
                     help="key=value,... over the defaults: hardware=h200, model=llama-3.1-8b, tp=1, "
                          "weight_dtype=bf16, router=prefix-aware, dram_gb=0 (half the host's), disk_gb=2000, "
                          "slo_ttft_s=20, slo_quantile=90")
    rep.add_argument("--hardware-file", help="your own hardware.toml")
    rep.add_argument("--models", help="your own models.toml")
    rep.add_argument("--prices", help="your own prices.toml")
    rep.add_argument("--workers", type=int, default=2, help="processes running rungs in parallel (default 2)")
    rep.add_argument("--out", default="report.html", help="HTML report path (PNGs go in <name>_files/)")
    rep.add_argument("--json", action="store_true", help="print the results as JSON")
    rep.set_defaults(run=cmd_report)

    gen = sub.add_parser("generate", help="run a local Llama-family checkpoint (HF folder) on prompts")
    gen.add_argument("--model", required=True, help="folder with config.json, safetensors and tokenizer.json")
    gen.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    gen.add_argument("--chat", action="store_true", help="wrap each prompt as a user message in the chat template")
    gen.add_argument("--system", help="system message for --chat")
    gen.add_argument("--max-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--top-k", type=int, default=0)
    gen.add_argument("--seed", type=int)
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--dtype", choices=["bfloat16", "float16", "float32"])
    gen.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    gen.add_argument("--kv-cache-gb", type=float, help="KV pool size (default: free GPU memory, or 0.5 GB on CPU)")
    gen.add_argument("--compile", action="store_true", help="torch.compile the model forward (CUDA)")
    gen.add_argument("--json", action="store_true", help="print outputs as JSON")
    gen.set_defaults(run=cmd_generate)

    from agentkv.server.serve import add_parser as add_serve_parser

    add_serve_parser(sub)
    return p


def add_trace_args(p: argparse.ArgumentParser, optional: bool) -> None:
    p.add_argument("paths", nargs="*" if optional else "+", metavar="PATH",
                   help="trace files or folders (kv-cache-tester JSON, Mooncake JSONL, Azure CSV, OpenAI chat "
                        "JSONL, agentkv .npz; .gz read transparently)")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed records (and report how many)")
    p.add_argument("--tokenizer", help="tokenizer.json for OpenAI chat logs (default: built-in byte-level)")
    p.add_argument("--block-size", type=int, default=64, help="block size for OpenAI chat logs (default 64)")
    if optional:
        add_generator_args(p, prefix="gen-")


def add_generator_args(p: argparse.ArgumentParser, prefix: str = "") -> None:
    g = p.add_argument_group("synthetic workload" + (" (used when no PATH is given)" if prefix else ""))
    g.add_argument(f"--{prefix}sessions", type=int, default=None, help="sessions to generate (default 100)")
    g.add_argument(f"--{prefix}seed", type=int, default=0)
    g.add_argument(f"--{prefix}config", help="generator parameters as JSON (from --config-out)")
    g.add_argument("--fit", help="fit the generator's parameters to this real trace first")


def add_arrival_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("arrivals (default: the trace's clock, else 20 concurrent sessions)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--concurrency", type=float, help="Poisson session starts at this many open sessions")
    x.add_argument("--rate", type=float, help="Poisson session starts at this many sessions per second")
    x.add_argument("--trace-clock", action="store_true", help="the trace's own timestamps")
    g.add_argument("--arrival-seed", type=int, default=0)


def arrival_from_args(args: argparse.Namespace, trace: Trace) -> ArrivalModel:
    if args.concurrency is not None:
        return ArrivalModel("concurrency", args.concurrency, args.arrival_seed)
    if args.rate is not None:
        return ArrivalModel("rate", args.rate, args.arrival_seed)
    if args.trace_clock:
        return ArrivalModel("trace", 0.0, args.arrival_seed)
    return ArrivalModel.default_for(trace)


def generator_config(args: argparse.Namespace, prefix: str = "") -> GeneratorConfig:
    from dataclasses import replace

    from agentkv.workload.generator import fit
    from agentkv.workload.load import load_trace

    opt = prefix.replace("-", "_")
    config, sessions, seed = (getattr(args, opt + name) for name in ("config", "sessions", "seed"))
    if config:
        with open(config) as f:
            cfg = GeneratorConfig.from_json(f.read())
    elif args.fit:
        cfg = fit(load_trace(args.fit))
    else:
        cfg = GeneratorConfig()
    return replace(cfg, seed=seed, **({"sessions": sessions} if sessions else {}))


def load_or_generate(args: argparse.Namespace) -> Trace:
    from agentkv.workload.generator import generate
    from agentkv.workload.load import load_trace

    if args.paths:
        return load_trace(args.paths, skip_bad=args.skip_bad, tokenizer=args.tokenizer, block_size=args.block_size)
    return generate(generator_config(args, prefix="gen-"))


def cmd_trace_stats(args: argparse.Namespace) -> int:
    from agentkv.workload.stats import trace_stats

    trace = load_or_generate(args)
    stats = trace_stats(trace, arrival_from_args(args, trace), window=args.window)
    if args.json:
        print(json.dumps(stats.to_dict(), indent=1))
    else:
        from agentkv.report.tables import print_trace_stats

        print_trace_stats(stats, trace.skipped)
    return 0


def cmd_trace_generate(args: argparse.Namespace) -> int:
    from agentkv.workload.formats import canonical
    from agentkv.workload.generator import generate

    cfg = generator_config(args)
    trace = generate(cfg)
    canonical.save(trace, args.out)
    if args.config_out:
        with open(args.config_out, "w") as f:
            f.write(cfg.to_json())
    print(f"wrote {args.out}: {trace.n_sessions} sessions, {trace.n_requests} requests, "
          f"{int(trace.input_tokens.sum()):,} input tokens")
    return 0


def cmd_trace_convert(args: argparse.Namespace) -> int:
    from agentkv.workload.formats import canonical
    from agentkv.workload.load import load_trace

    trace = load_trace(args.paths, skip_bad=args.skip_bad, tokenizer=args.tokenizer, block_size=args.block_size)
    canonical.save(trace, args.out)
    print(f"wrote {args.out}: {trace.n_sessions} sessions, {trace.n_requests} requests"
          + (f", {len(trace.skipped)} bad records skipped" if trace.skipped else ""))
    return 0


def cmd_cache_sweep(args: argparse.Namespace) -> int:
    import os

    from agentkv.catalog import model
    from agentkv.kvcache.sizing import codec
    from agentkv.kvcache.sweep import (
        capacities_arg,
        parse_lower_tiers,
        rows,
        summary_lines,
        sweep,
        write_csv,
        write_json,
    )
    from agentkv.report.progress import progress_bar
    from agentkv.report.tables import print_sweep

    trace = load_or_generate(args)
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    capacities = capacities_arg(args.capacity)
    lower = parse_lower_tiers(args.tiers)
    m, c = model(args.model, args.models), codec(args.codec)
    arrival = arrival_from_args(args, trace)
    total = len(capacities) * len(set(policies) - {"infinite"} | {"belady"})
    with progress_bar(total, "cache sweep", quiet=args.json) as step:
        points, infinite = sweep(trace, policies, capacities, lower, arrival, m, c, args.write_through, step)
    os.makedirs(args.out, exist_ok=True)
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


def deployment_spec(text: str, hardware_file: str | None, models_file: str | None):
    from dataclasses import fields

    from agentkv.report.ladder import DeploymentSpec

    types = {f.name: f.type for f in fields(DeploymentSpec)}
    values: dict[str, object] = {"hardware_file": hardware_file, "models_file": models_file}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = part.partition("=")
        key = key.strip()
        if not eq or key not in types or key.endswith("_file"):
            raise ValueError(f"--deployment: unknown setting {key!r} "
                             f"(settings: {', '.join(k for k in types if not k.endswith('_file'))})")
        kind = types[key]
        try:
            values[key] = int(value) if kind == "int" else float(value) if kind == "float" else value.strip()
        except ValueError:
            raise ValueError(f"--deployment: {key}={value!r} is not a number") from None
    return DeploymentSpec(**values)  # type: ignore[arg-type]


def cmd_report(args: argparse.Namespace) -> int:
    import os
    from dataclasses import asdict, replace

    import numpy as np

    from agentkv.catalog import hardware, prices
    from agentkv.cost.plans import break_even
    from agentkv.cost.providers import all_providers
    from agentkv.kvcache.sizing import codec
    from agentkv.report.html import plots, write_html
    from agentkv.report.ladder import LADDER, run_ladder
    from agentkv.report.progress import progress_bar
    from agentkv.report.tables import print_ladder
    from agentkv.workload.arrivals import arrival_times

    if not args.paths and not args.gen_sessions:
        args.gen_sessions = REPORT_SESSIONS
    trace = load_or_generate(args)
    arrival = arrival_from_args(args, trace)
    spec = deployment_spec(args.deployment, args.hardware_file, args.models)
    price_table = prices(args.prices)
    hw = hardware(spec.hardware, spec.hardware_file)
    gpu_hour = float(price_table["gpu_hour"].get(spec.hardware, 0.0))
    if gpu_hour <= 0:
        raise ValueError(f"prices: no gpu_hour price for hardware '{spec.hardware}'")
    with progress_bar(len(LADDER), "report", quiet=args.json) as step:
        step(LADDER[0].name)
        results = run_ladder(trace, spec, arrival, gpu_hour, workers=args.workers,
                             on_done=lambda r: step(f"{r.rung.name} done"))
    arrivals = arrival_times(trace, arrival)
    providers = all_providers(trace, arrivals, price_table["providers"]) if trace.has_block_ids else []
    plan_prices = {k: float(v) for k, v in price_table.get("plans", {}).items() if k != "source"}
    top_sessions = int((trace.session_parent < 0).sum())
    plans = break_even(plan_prices, providers, top_sessions)
    meta = {
        "trace": f"{trace.source}: {top_sessions} sessions, {trace.n_requests:,} requests, "
                 f"{int(trace.input_tokens.sum()):,} input tokens",
        "arrivals": arrival.describe(),
        "deployment": f"{spec.model} on {hw.name} (tp={spec.tp}, weights {spec.weight_dtype}), router {spec.router}, "
                      f"${gpu_hour}/GPU-hour",
        "SLO": f"p{spec.slo_quantile:g} TTFT <= {spec.slo_ttft_s:g} s",
    }
    from agentkv.report.ladder import rung_config
    from agentkv.report.levers import codec_fits, tier_loads

    median = int(np.median(trace.input_tokens))
    base = rung_config(spec, LADDER[-1], arrival, 1).deployment
    fits = codec_fits(base, median)
    loads = tier_loads(replace(base, kv_codec=codec("bf16")), median)
    meta["median context"] = f"{median:,} tokens"
    meta["contexts per GPU"] = ", ".join(f"{f.codec} {f.contexts_per_gpu:.1f} ({f.gib_per_context:.1f} GiB each)"
                                         for f in fits)
    meta["bf16 KV of a median context on the GPU"] = ", ".join(f"{t.source} {t.seconds:.2f} s" for t in loads)
    files_dir = os.path.splitext(args.out)[0] + "_files"
    images = plots(results, providers, files_dir)
    write_html(args.out, "agentkv report", meta, results, providers, plans, images)
    doc = {**meta, "ladder": [r.row for r in results],
           "providers": [{"name": p.name, "hit_rate": p.hit_rate, "usd": p.usd, "usd_no_cache": p.usd_no_cache,
                          "saving": p.saving, "usd_per_mtok": p.usd_per_mtok} for p in providers],
           "break_even": [asdict(b) for b in plans]}
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(doc, f, indent=1, default=float)
    if args.json:
        print(json.dumps(doc, indent=1, default=float))
    else:
        print_ladder([r.row for r in results], [(p.name, p.hit_rate, p.usd_per_mtok) for p in providers],
                     f"agentkv report: {meta['trace']}; {meta['deployment']}; SLO {meta['SLO']}")
        for key in ("median context", "contexts per GPU", "bf16 KV of a median context on the GPU"):
            print(f"{key}: {meta[key]}")
        print(f"wrote {args.out}, {os.path.splitext(args.out)[0]}.json and {len(images)} plots in {files_dir}/")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from agentkv.engine.llm import LLM
    from agentkv.engine.sequence import SamplingParams

    llm = LLM(args.model, dtype=args.dtype, device=args.device, compile=args.compile,
              kv_cache_bytes=int(args.kv_cache_gb * 2**30) if args.kv_cache_gb else None)
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed, stop=tuple(args.stop))
    if args.chat:
        system = [{"role": "system", "content": args.system}] if args.system else []
        outs = llm.chat([[*system, {"role": "user", "content": p}] for p in args.prompt], params)
    else:
        outs = llm.generate(list(args.prompt), params)
    if args.json:
        print(json.dumps([{"text": o.outputs[0].text, "token_ids": o.outputs[0].token_ids,
                           "finish_reason": o.outputs[0].finish_reason, "prompt_tokens": len(o.prompt_token_ids),
                           "cached_tokens": o.num_cached_tokens, "cached_tokens_per_tier": o.cached_tokens_per_tier}
                          for o in outs], indent=1))
    else:
        for o in outs:
            print(o.outputs[0].text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
