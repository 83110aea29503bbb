"""`agentkv replay --endpoint URL TRACE`: the flags, and the run from calibration to the files it writes."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

from agentkv.commands.flags import add_trace_args
from agentkv.replay import window

INTERRUPTED = 130
PREDICTABLE = ("lru", "lfu", "agent")  # policies the core runs without the server's model (cost needs it)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("replay", help="replay a trace's sessions against a live OpenAI/Anthropic-compatible server "
                                      "and measure cached tokens, TTFT, TPOT (with --predict: beside the prediction)",
                       description="Prompts are synthesized so that equal trace block ids give equal text, in words "
                                   "the server counts as one token each (checked with the server before the run). "
                                   "--tokenizer (the served model's tokenizer.json or folder) also picks those words "
                                   "from its vocabulary. Writes requests.csv, summary.json and two plots to --out.")
    add_trace_args(p, optional=False)
    p.add_argument("--endpoint", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--api", choices=["openai", "openai-chat", "anthropic"], default="openai",
                   help="openai: /v1/completions (raw prompt: exact block boundaries); openai-chat: "
                        "/v1/chat/completions; anthropic: /v1/messages (default openai)")
    p.add_argument("--model", help="model name to send (default: the first of the server's /v1/models)")
    p.add_argument("--api-key", default=os.environ.get("AGENTKV_API_KEY", ""),
                   help="bearer token / x-api-key (default: $AGENTKV_API_KEY)")
    p.add_argument("--sessions", type=int, help="replay the first N top-level sessions (with their sub-agents)")
    p.add_argument("--max-turns", type=int, help="only the first N turns of each session")
    p.add_argument("--concurrency", type=int,
                   help="sessions replayed at once (default: the trace's own session starts, else 8)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="multiply every think time and session start by this (0: no waiting; default 1)")
    p.add_argument("--token-scale", type=float, default=1.0,
                   help="shrink every block, prompt tail and reply by this factor, in (0, 1] (default 1)")
    p.add_argument("--max-tokens", type=int, help="cap each reply at this many tokens")
    p.add_argument("--max-inflight", type=int, default=64, help="requests outstanding at most (default 64)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default 600)")
    p.add_argument("--seed", type=int, help="seed of the synthesized text (default: a fresh one per run, so no run "
                                            "hits another's prompts in the server's cache; the same --seed shares it)")
    p.add_argument("--max-think", type=float, default=float("inf"), metavar="SECONDS",
                   help="cap every think time, as replayed (after --time-scale), at this many seconds (default: none)")
    p.add_argument("--fit-window", choices=window.MODES, default="scale",
                   help="requests longer than the server's max_model_len: scale lowers --token-scale until they fit "
                        "(and cuts what one token per block still leaves over); cap cuts them to the window; stop "
                        "refuses the run, saying by how much they exceed it (default scale)")
    p.add_argument("--max-errors", type=int, default=20,
                   help="stop once this many requests in a row fail the same way (default 20; 0: never)")
    p.add_argument("--no-reuse", action="store_true",
                   help="fresh text for every request (same token counts, nothing to hit): the no-cache baseline")
    p.add_argument("--no-ignore-eos", action="store_true",
                   help="do not send ignore_eos (for servers that reject it; replies may end early)")
    p.add_argument("--extra-body", help="JSON object merged into every request body (e.g. '{\"cache_salt\": \"x\"}')")
    p.add_argument("--predict", metavar="POLICY",
                   help="also predict each request's cached tokens with the policy core at the server's policy "
                        "(lru, lfu, agent), --capacity and --server-block-size")
    p.add_argument("--capacity", help="the server's GPU KV capacity in tokens (e.g. 8192, 256k), for --predict "
                                      "(default: what the server's /metrics reports, agentkv's or vLLM's)")
    p.add_argument("--server-block-size", type=int, default=16, help="the server's KV block size (default 16)")
    p.add_argument("--out", default="replay", help="folder for requests.csv, summary.json and plots (default replay)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(run=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    import httpx  # noqa: F401  (missing: the CLI names the 'replay' extra)

    from agentkv.cli_errors import check_output

    check_output(args.out, folder=True)
    for flag, value, low in (("--max-inflight", args.max_inflight, 1), ("--concurrency", args.concurrency, 1),
                             ("--max-turns", args.max_turns, 1), ("--max-tokens", args.max_tokens, 1),
                             ("--server-block-size", args.server_block_size, 1), ("--max-errors", args.max_errors, 0),
                             ("--sessions", args.sessions, 1)):
        if value is not None and value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if args.time_scale < 0 or args.timeout <= 0 or not args.max_think >= 0:
        raise ValueError("--time-scale and --max-think must be >= 0 and --timeout > 0")
    try:
        extra = json.loads(args.extra_body) if args.extra_body else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"--extra-body: not JSON ({e})") from None
    if not isinstance(extra, dict):
        raise ValueError("--extra-body must be a JSON object")
    if args.predict and args.predict not in PREDICTABLE:
        raise ValueError(f"--predict: one of {', '.join(PREDICTABLE)} (the server's online policy), got {args.predict!r}")
    capacity = None
    if args.capacity:
        from agentkv.kvcache.tiers import parse_size

        size = parse_size(args.capacity)
        if size.is_bytes or size.value < args.server_block_size:
            raise ValueError(f"--capacity: give the server's KV capacity in tokens, at least one block (got {args.capacity})")
        capacity = int(size.value) // args.server_block_size
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), "little")
    return asyncio.run(_replay(args, extra, capacity))


def _load(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The trace, its synthesized text and the plan: read once the endpoint has answered, since a large trace
    takes seconds to load and a server that is down, or refuses the key or the model, is answered at once."""
    from agentkv.replay import alphabet
    from agentkv.replay.runner import Pacing, plan
    from agentkv.replay.synth import Synth
    from agentkv.workload.load import load_trace

    trace = load_trace(args.paths, skip_bad=args.skip_bad, tokenizer=args.tokenizer, block_size=args.block_size)
    words = alphabet.from_tokenizer(args.tokenizer) if args.tokenizer else alphabet.builtin()
    synth = Synth(trace, words.words, args.token_scale, args.seed, reuse=not args.no_reuse, reply_cap=args.max_tokens)
    pacing = Pacing(args.time_scale, args.concurrency, args.max_inflight, args.max_think, args.max_errors)
    return synth, plan(trace, args.sessions, args.max_turns, args.concurrency), pacing


async def _replay(args: argparse.Namespace, extra: dict, capacity: int | None) -> int:
    import httpx

    from agentkv.replay.calibrate import calibrate
    from agentkv.replay.client import Api
    from agentkv.replay.endpoint import probe

    base = args.endpoint.rstrip("/").removesuffix("/v1")
    limits = httpx.Limits(max_connections=args.max_inflight + 4, max_keepalive_connections=args.max_inflight + 4)
    async with httpx.AsyncClient(base_url=base, timeout=httpx.Timeout(args.timeout, connect=10.0), limits=limits) as c:
        api = Api(args.api, "", args.api_key, not args.no_ignore_eos, extra)
        endpoint = await probe(c, api, args.model)
        api.model = endpoint.model
        say(args, f"endpoint: {endpoint.describe(base)}")
        synth, the_plan, pacing = _load(args)
        cal = await calibrate(c, api, synth.words, endpoint.max_model_len)
        if endpoint.max_model_len and (fitted := window.fit_window(synth, the_plan.requests, endpoint.max_model_len,
                                                                   cal.overhead, args.fit_window)):
            say(args, f"window: {fitted}")
        server = await _server_model(c, args, capacity) if args.predict else None
        api.token_ids = server is not None and bool(cal.token_words)  # the reply's blocks, named: see predict
        say(args, f"replay: {the_plan.n_requests:,} requests of {len(the_plan.groups)} sessions from "
                  f"{synth.trace.source} ({api.kind}, text seed {synth.seed}); {synth.block_tokens} tokens per trace "
                  f"block; server adds {cal.overhead} tokens per prompt ({cal.checked_words} words checked via "
                  f"{cal.method}); think time alone takes {_duration(the_plan.think_floor(synth.trace, pacing))}")
        runner, stopped, duration = await _run(args, c, api, synth, cal, pacing, the_plan)
    summary = _write(args, runner.records, duration, synth, cal, server, api, the_plan.n_requests)
    if runner.halted:
        print(f"agentkv: error: replay stopped: {runner.halted}", file=sys.stderr)
    elif summary.errors and not stopped:
        print(f"agentkv: error: {sum(summary.errors.values()):,} of {summary.requests:,} requests failed: "
              + ", ".join(f"{k} {v}" for k, v in summary.errors.items()), file=sys.stderr)
    return INTERRUPTED if stopped else (1 if runner.halted or summary.errors else 0)


async def _run(args: argparse.Namespace, c: Any, api: Any, synth: Any, cal: Any, pacing: Any,
               the_plan: Any) -> tuple[Any, bool, float]:
    """The replay itself, with its progress and Ctrl-C: (the runner, whether Ctrl-C stopped it, seconds)."""
    from agentkv.replay.runner import Runner

    progress = _Progress(the_plan.n_requests, quiet=args.json)
    runner = Runner(c, api, synth, cal.overhead, pacing, progress.done)
    loop = asyncio.get_running_loop()
    stopped = []

    def stop() -> None:
        stopped.append(True)
        runner.stop.set()
        loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C stops at once
        print("\nreplay: stopping; writing what has finished", file=sys.stderr)

    loop.add_signal_handler(signal.SIGINT, stop)
    t0 = time.perf_counter()
    with progress:
        shown = asyncio.create_task(progress.show(runner))
        try:
            await runner.run(the_plan)
        finally:
            shown.cancel()
            loop.remove_signal_handler(signal.SIGINT)
    return runner, bool(stopped), time.perf_counter() - t0


def say(args: argparse.Namespace, line: str) -> None:
    """A line about the run: on stdout, or on stderr where stdout carries --json."""
    print(line, file=sys.stderr if args.json else sys.stdout, flush=True)


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"at least {seconds / 3600:.1f} h (--max-think caps it)"
    return f"at least {seconds / 60:.1f} min" if seconds >= 60 else f"at least {seconds:.0f} s"


def _write(args: argparse.Namespace, records: list, duration: float, synth: Any, cal: Any, server: Any,
           api: Any, planned: int) -> Any:
    from agentkv.replay import plots
    from agentkv.replay.results import print_summary, summarize, write_csv, write_json

    sweep_cmd = _predict(args, records, synth, cal, server) if server is not None else ""
    s = summarize(records, duration, planned)
    if sweep_cmd:
        s.prediction = server.describe()
    s.meta = {"trace": synth.trace.source, "endpoint": args.endpoint, "api": api.kind, "model": api.model,
              "token_scale": synth.token_scale, "time_scale": args.time_scale, "block_tokens": synth.block_tokens,
              "server_overhead_tokens": cal.overhead, "max_inflight": args.max_inflight, "reuse": not args.no_reuse,
              "concurrency": args.concurrency, "seed": args.seed, "window": synth.window,
              "sweep_command": sweep_cmd}
    write_csv(records, os.path.join(args.out, "requests.csv"))
    write_json(s, os.path.join(args.out, "summary.json"))
    title = f"replay of {synth.trace.source} against {args.endpoint} ({api.model})"
    plots.ttft_over_time(records, os.path.join(args.out, "ttft_over_time.png"), title)
    plots.cached_share_per_session(records, os.path.join(args.out, "cached_share_per_session.png"), title)
    if args.json:
        print(json.dumps(s.to_dict(), indent=1, default=float))
    else:
        print_summary(s, title)
        if sweep_cmd:
            print(f"the cache sweep's own figure for these requests: {sweep_cmd}")
        print(f"wrote {args.out}/requests.csv, summary.json, ttft_over_time.png, cached_share_per_session.png"
              + (", as_served.npz" if sweep_cmd else ""))
    return s


def _predict(args: argparse.Namespace, records: list, synth: Any, cal: Any, server: Any) -> str:
    """Fill each record's prediction and write as_served.npz; returns the equivalent `cache sweep` command ("" if
    nothing could be predicted: the measurement is written all the same)."""
    from agentkv.replay.predict import as_served, predict_routed
    from agentkv.workload.formats import canonical

    try:
        served, in_order, replies = as_served(records, synth, cal.overhead, server.block_size, cal.token_words)
    except ValueError as e:
        print(f"replay: no prediction: {e}", file=sys.stderr)
        return ""
    names = [name for name, _ in server.tiers]
    cached, routed = predict_routed(served, server, replies)
    for r, per_tier, replica in zip(in_order, cached, routed.tolist(), strict=True):
        r.predicted_cached = int(per_tier.sum())
        r.predicted_replica = replica
        r.predicted_per_tier = {n: int(v) for n, v in zip(names, per_tier, strict=True) if v}
    canonical.save(served, os.path.join(args.out, "as_served.npz"))
    return (f"agentkv cache sweep {args.out}/as_served.npz --trace-clock --policy {server.policy} "
            f"--capacity {server.capacity_blocks * server.block_size} --out {args.out}/sweep")


async def _server_model(client: Any, args: argparse.Namespace, capacity: int | None) -> Any:
    """--predict's server: its GPU KV in blocks from --capacity, else its tiers as its /metrics reports them;
    behind `agentkv serve --replicas`, its replicas and router too (the page sums the replicas' blocks)."""
    from agentkv.replay.predict import ServerModel, fleet_from_metrics, kv_blocks_from_metrics

    r = await client.get("/metrics")
    replicas, router = (fleet_from_metrics(r.text) if r.status_code == 200 else None) or (1, "session")
    if capacity is not None:
        return ServerModel(args.predict, (("gpu", capacity),), args.server_block_size, replicas, router)
    found = kv_blocks_from_metrics(r.text) if r.status_code == 200 else None
    if found is None:
        raise ValueError(f"{client.base_url}/metrics reports no KV capacity: pass --capacity (tokens)")
    tiers = tuple((name, blocks // replicas) for name, blocks in found[0].items())
    return ServerModel(args.predict, tiers, found[1] or args.server_block_size, replicas, router)


class _Progress:
    """The replies so far (ok, errors, cached share) and the turns waiting on think time, with when the next is
    due, so a long wait reads as one: a live bar on a terminal, a line every PERIOD seconds elsewhere (a log, CI),
    on stderr; nothing for --json."""

    PERIOD = 30.0

    def __init__(self, total: int, quiet: bool) -> None:
        from rich.console import Console

        self.total, self.quiet = total, quiet
        self.ok = self.err = self.prompt = self.cached = 0
        self.console = Console(stderr=True)
        self.bar: Any = None

    def __enter__(self) -> _Progress:
        if not self.quiet and self.console.is_terminal:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn(), console=self.console,
                                transient=True)
            self.bar.__enter__()
            self.task = self.bar.add_task("replay", total=self.total)
        return self

    def done(self, r: Any) -> None:
        o = r.outcome
        if o.error:
            self.err += 1
        else:
            self.ok += 1
            if o.cached_tokens >= 0:
                self.prompt += o.prompt_tokens
                self.cached += o.cached_tokens
        if self.bar is not None:
            self.bar.update(self.task, advance=1)

    def line(self, runner: Any) -> str:
        share = 100 * self.cached / self.prompt if self.prompt else 0.0
        waiting, next_in = runner.waiting()
        wait = f"; {waiting} waiting on think time, the next in {next_in:,.0f} s" if waiting else ""
        return f"replay: ok {self.ok} errors {self.err} of {self.total:,}, cached {share:.1f}%{wait}"

    async def show(self, runner: Any) -> None:
        if self.quiet:
            return
        t0 = time.perf_counter()
        while True:
            await asyncio.sleep(1.0 if self.bar is not None else self.PERIOD)
            if self.bar is not None:
                self.bar.update(self.task, description=self.line(runner))
            else:
                print(f"{self.line(runner)} ({time.perf_counter() - t0:,.0f} s)", file=sys.stderr, flush=True)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)
