"""The `agentkv` command. Each subcommand parses its flags here and calls into the package; heavy imports
(torch, matplotlib) happen inside the commands that need them, so `agentkv trace stats` starts fast."""

from __future__ import annotations

import argparse
import json
import os
import sys

from agentkv import __version__
from agentkv.cli_errors import (
    Parser,
    UsageError,
    check_output,
    install_hint,
    pip_extra,
    positive,
    run_guarded,
)
from agentkv.cluster.tasks import LOCAL
from agentkv.report.budget import BUDGET_S
from agentkv.report.capacity import SAMPLE_SESSIONS
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.generator import GeneratorConfig
from agentkv.workload.trace import Trace
from agentkv.workload.window import OVER_WINDOW

COMMAND_EXTRAS = {"cmd_serve": "server", "cmd_replay": "replay", "cmd_generate": "engine", "cmd_kv_eval": "engine"}
REPORT_SESSIONS = 40  # the default report's synthetic workload: big enough to be agentic, quick enough to run
ABOUT = ("agentkv: a prefix-shared, quantized, tiered KV cache for agentic LLM serving, and the trace tools, "
         "simulator and cost model that say what each lever buys. Start with `agentkv report` (what to deploy for "
         "an agentic workload), or `agentkv report TRACE` for your own traffic.")


def main(argv: list[str] | None = None) -> int:
    """Bad input ends in one line on stderr and exit 2, runtime failures in exit 1 (see cli_errors.py)."""

    def run() -> int:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not hasattr(args, "run"):  # a command group without its subcommand: that group's commands
            getattr(args, "group", parser).print_help()
            return 2
        try:
            return args.run(args)
        except ModuleNotFoundError as e:  # the extra this command needs, where it provides the module
            hint = install_hint(e, COMMAND_EXTRAS.get(args.run.__name__))
            if hint is None:
                raise
            raise UsageError(hint) from None

    return run_guarded(run)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="agentkv", description=ABOUT)
    p.add_argument("--version", action="version", version=f"agentkv {__version__}")
    sub = p.add_subparsers(title="commands")
    group = sub.add_parser("trace", help="load, convert, generate and describe workload traces")
    group.set_defaults(group=group)
    trace = group.add_subparsers(title="trace commands")

    stats = trace.add_parser("stats", help="what a trace asks of a KV cache (no PATH: the built-in workload)")
    add_trace_args(stats, optional=True)
    add_arrival_args(stats)
    stats.add_argument("--window", type=positive(float), default=300.0, help="working-set window in seconds (default 300)")
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

    group = sub.add_parser("cache", help="replay traces through the KV cache policy core")
    group.set_defaults(group=group)
    cache = group.add_subparsers(title="cache commands")
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
    add_ray_arg(sw)
    sw.set_defaults(run=cmd_cache_sweep)

    from agentkv.replay.cli import add_replay_parser

    add_replay_parser(sub)

    rep = sub.add_parser("report", help="what to deploy for this traffic: every KV-cache lever on one fleet, sized "
                                        "to the TTFT SLO, and per GPU (no PATH: the built-in synthetic agentic "
                                        "workload)")
    add_trace_args(rep, optional=True, default_sessions=REPORT_SESSIONS)
    add_arrival_args(rep)
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
    add_ray_arg(rep)
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

    gen = sub.add_parser("generate", help="run a local Llama-family checkpoint (HF folder) on prompts")
    gen.add_argument("--model", required=True, help="folder with config.json, safetensors and tokenizer.json")
    gen.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    gen.add_argument("--chat", action="store_true", help="wrap each prompt as a user message in the chat template")
    gen.add_argument("--system", help="system message for --chat")
    gen.add_argument("--max-tokens", type=positive(int), default=64, help="tokens to generate at most (default 64)")
    gen.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0: greedy (default 0)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1: off)")
    gen.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (default 0: off)")
    gen.add_argument("--seed", type=int, help="sampling seed (default: unseeded)")
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                     help="weight and activation dtype (default: the checkpoint's)")
    gen.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    gen.add_argument("--kv-cache-gb", type=float, help="KV pool size (default: free GPU memory, or 0.5 GB on CPU)")
    gen.add_argument("--kv-codec", default="auto", help="KV page format: bf16, fp16, fp8, int8, int4, int4-gN "
                     "(default auto: the model's dtype); `agentkv kv-eval` measures what each costs in accuracy")
    gen.add_argument("--kv-tiers", help="tiers below the GPU, NAME=SIZE[@LOCATION] comma-separated, e.g. "
                     "dram=8GiB,disk=100GiB@/mnt/nvme/kv,redis=20GiB@redis://127.0.0.1:6379")
    gen.add_argument("--compile", action="store_true", help="torch.compile the model forward (CUDA)")
    gen.add_argument("--attention-backend", choices=["auto", "torch", "triton"], default="auto",
                     help="auto (default): Triton kernels on CUDA, the torch reference elsewhere")
    gen.add_argument("--json", action="store_true", help="print outputs as JSON")
    gen.set_defaults(run=cmd_generate)

    from agentkv.server.serve import add_parser as add_serve_parser

    add_serve_parser(sub)
    from agentkv.evaluate.kv_eval import add_parser as add_kv_eval_parser

    add_kv_eval_parser(sub)
    return p


def add_trace_args(p: argparse.ArgumentParser, optional: bool, default_sessions: int | None = None) -> None:
    p.add_argument("paths", nargs="*" if optional else "+", metavar="PATH",
                   help="trace files or folders (kv-cache-tester JSON, Mooncake JSONL, Azure CSV, OpenAI chat "
                        "JSONL, agentkv .npz; .gz read transparently)")
    p.add_argument("--skip-bad", action="store_true", help="skip malformed records (and report how many)")
    p.add_argument("--tokenizer", help="tokenizer.json for OpenAI chat logs (default: built-in byte-level)")
    p.add_argument("--block-size", type=positive(int), default=64,
                   help="block size for OpenAI chat logs (default 64)")
    if optional:
        add_generator_args(p, prefix="gen-", default_sessions=default_sessions)


def add_generator_args(p: argparse.ArgumentParser, prefix: str = "", default_sessions: int | None = None) -> None:
    g = p.add_argument_group("synthetic workload" + (" (used when no PATH is given)" if prefix else ""))
    n = default_sessions or GeneratorConfig().sessions
    g.add_argument(f"--{prefix}sessions", type=positive(int), default=None,
                   help=f"top-level sessions to generate; sub-agents come on top (default {n}, or --{prefix}config's)")
    g.add_argument(f"--{prefix}seed", type=int, default=0, help="random seed of the generator (default 0)")
    g.add_argument(f"--{prefix}config", help="generator parameters as JSON (from --config-out)")
    g.add_argument("--fit", help="fit the generator's parameters to this real trace first")


def add_ray_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", nargs="?", const=LOCAL, metavar="ADDRESS",
                   help="run the simulation points as Ray tasks on the cluster at ADDRESS (ray://host:10001 or "
                        "host:6379; no ADDRESS: a local cluster started here); needs agentkv[ray]")


def check_ray(flag: str = "--ray") -> None:
    """A flag that needs Ray, without Ray installed, is bad input: say so before loading anything."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise UsageError(f"{flag}: Ray is not installed here ({pip_extra('ray')})")


def add_arrival_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("arrivals (default: the trace's clock, else 20 concurrent sessions)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--concurrency", type=positive(float), help="Poisson session starts at this many open sessions")
    x.add_argument("--rate", type=positive(float), help="Poisson session starts at this many sessions per second")
    x.add_argument("--trace-clock", action="store_true", help="the trace's own timestamps")
    g.add_argument("--arrival-seed", type=int, default=0, help="random seed of the session starts (default 0)")


def arrival_from_args(args: argparse.Namespace, trace: Trace) -> ArrivalModel:
    if args.concurrency is not None:
        from agentkv.limits import check_concurrency

        check_concurrency(args.concurrency, int((trace.session_parent < 0).sum()))
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
    cfg = replace(cfg, seed=seed, **({"sessions": sessions} if sessions else {}))
    from agentkv.limits import check_generated

    check_generated(cfg, f"--{prefix}sessions")
    return cfg


def load_or_generate(args: argparse.Namespace) -> Trace:
    return load_or_generate_with_config(args)[0]


def load_or_generate_with_config(args: argparse.Namespace) -> tuple[Trace, GeneratorConfig | None]:
    """The trace the PATHs name, else the generated one with the parameters it was generated from."""
    from agentkv.workload.generator import generate
    from agentkv.workload.load import load_trace

    if args.paths:
        trace = load_trace(args.paths, skip_bad=args.skip_bad, tokenizer=args.tokenizer, block_size=args.block_size)
        return trace, None
    cfg = generator_config(args, prefix="gen-")
    return generate(cfg), cfg


def needs_block_ids(trace: Trace, command: str, paths: list[str]) -> Trace:
    """A trace without prefix information cannot say what a KV cache buys: refused by name, before any work."""
    if not trace.has_block_ids:
        raise UsageError(f"{', '.join(paths) or trace.source}: no prefix information (block ids; an Azure CSV has arrivals and lengths "
                         f"only): `agentkv {command}` weighs what a KV cache reuses, so it needs kv-cache-tester, "
                         "Mooncake, OpenAI chat logs or an agentkv .npz with block ids; `agentkv trace stats` "
                         "reads this one")
    return trace


def cmd_trace_stats(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from agentkv.report.progress import progress_bar
    from agentkv.workload.stats import fit_figures, trace_stats

    with progress_bar(None, "trace stats", quiet=args.json) as step:
        step(f"loading {len(args.paths)} path(s)" if args.paths else "generating the workload"
             + (f" fitted to {args.fit}" if args.fit else ""))
        trace, cfg = load_or_generate_with_config(args)
        step(f"measuring {trace.n_requests:,} requests")
        stats = trace_stats(trace, arrival_from_args(args, trace), window=args.window)
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
        cfg = generator_config(args)
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


def cmd_cache_sweep(args: argparse.Namespace) -> int:
    import os

    from agentkv.catalog import model
    from agentkv.kvcache.sizing import codec
    from agentkv.kvcache.sweep import (
        capacities_arg,
        parse_lower_tiers,
        policies_arg,
        rows,
        summary_lines,
        sweep,
        write_csv,
        write_json,
    )
    from agentkv.report.progress import progress_bar
    from agentkv.report.tables import print_sweep

    check_output(args.out, folder=True)
    if args.ray is not None:
        check_ray()
    policies = policies_arg(args.policy)
    capacities = capacities_arg(args.capacity)  # every flag before the trace loads: a typo costs no load
    lower = parse_lower_tiers(args.tiers)
    m, c = model(args.model, args.models), codec(args.codec)
    trace = needs_block_ids(load_or_generate(args), "cache sweep", args.paths)
    arrival = arrival_from_args(args, trace)
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
        check_ray()
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
        trace = needs_block_ids(load_or_generate(args), "report", args.paths)
        arrival = arrival_from_args(args, trace)
        spec, why = choose_model(trace, spec, named)
    run_report(trace, spec, arrival, price_table, out=args.out, replicas=args.replicas, workers=args.workers,
               print_json=args.json, over_window=args.over_window, candidates=candidates, model_choice=why,
               sample_size=args.sample_sessions, ray=args.ray, budget_s=args.budget)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from agentkv.cli_errors import check_device, check_model_dir, engine_error

    if args.kv_tiers:  # the flags' own syntax first, then the folder they apply to
        from agentkv.storage.spec import parse_kv_tiers

        try:
            parse_kv_tiers(args.kv_tiers)
        except ValueError as e:
            raise UsageError(str(e).replace("kv_tiers", "--kv-tiers", 1)) from None
    if args.kv_codec != "auto":
        from agentkv.kvcache.sizing import codec

        try:
            codec(args.kv_codec)
        except ValueError as e:
            raise UsageError(f"--kv-codec: {e}") from None
    check_model_dir(args.model)
    if not os.path.isfile(os.path.join(args.model, "tokenizer.json")):
        raise UsageError(f"--model {args.model}: no tokenizer.json in the folder; `agentkv generate` takes text "
                         "prompts, so it needs the model's tokenizer")
    check_device(args.device)
    from agentkv.engine.llm import LLM
    from agentkv.engine.sequence import SamplingParams

    try:
        llm = LLM(args.model, dtype=args.dtype, device=args.device, compile=args.compile, kv_codec=args.kv_codec,
                  kv_cache_bytes=int(args.kv_cache_gb * 2**30) if args.kv_cache_gb else None,
                  kv_tiers=args.kv_tiers, attention_backend=args.attention_backend)
    except ValueError as e:
        raise engine_error(e, args.kv_tiers) from None
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
    llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
