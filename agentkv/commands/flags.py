"""The flags several commands share (a trace or the built-in workload, arrivals, Ray) and what they build."""

from __future__ import annotations

import argparse

from agentkv.cli_errors import UsageError, pip_extra, positive
from agentkv.cluster.tasks import LOCAL
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.generator import GeneratorConfig
from agentkv.workload.trace import Trace


def command_group(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """A command of subcommands (`agentkv trace ...`); given alone, it prints its own commands."""
    group = sub.add_parser(name, help=help)
    group.set_defaults(group=group)
    return group.add_subparsers(title=f"{name} commands")


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
                        "host:6379; no ADDRESS: a local cluster started here); needs the ray extra: pip install -e '.[ray]'")


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

    from agentkv.workload.fit import fit
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
