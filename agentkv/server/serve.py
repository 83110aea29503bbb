"""`agentkv serve`: load a checkpoint, start the engine loop and serve it over HTTP with uvicorn.

Every flag and file is checked, and the port bound, before the model loads (`startup`); once it is up, one
line says what is served. SIGTERM (or Ctrl-C) stops accepting connections, lets the requests in flight finish, drains the engine,
then ends by that signal (uvicorn re-raises it, so a supervisor sees a clean stop: status 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from agentkv.cli_errors import positive
from agentkv.server import startup
from agentkv.server.tool_parsers import PARSERS
from agentkv.sim.router import ROUTERS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI- and Anthropic-compatible HTTP server over a local checkpoint")
    p.add_argument("--model", required=True, help="folder with config.json, safetensors and tokenizer.json")
    p.add_argument("--served-model-name", nargs="+", metavar="NAME",
                   help="the names clients may send as 'model', e.g. an agent's own model names (default: the "
                        "folder's name); the first is the model's own, the others its aliases")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=startup.port, default=8000, help="port to listen on (default 8000)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="weight and activation dtype (default: the checkpoint's)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--kv-cache-gb", type=positive(float), help="KV pool size (default: free GPU memory, or 0.5 GB on CPU)")
    p.add_argument("--kv-tiers", help="tiers below the GPU, e.g. dram=8GiB,disk=100GiB@/mnt/nvme/kv,"
                                      "redis=20GiB@redis://127.0.0.1:6379 (default: none)")
    p.add_argument("--kv-codec", default="auto", help="how KV pages are stored: auto, bf16, fp16, fp8, int8, int4, int4-kivi "
                                                      "(default auto: the model's dtype)")
    p.add_argument("--policy", default="lru", help="KV eviction policy: lru, lfu, cost, agent (default lru; agent "
                                                   "follows sessions from how each reply ended)")
    p.add_argument("--block-size", type=positive(int), default=16, help="tokens per KV block (default 16)")
    p.add_argument("--max-num-seqs", type=positive(int), default=64, help="requests in the running batch (default 64)")
    p.add_argument("--max-batched-tokens", type=positive(int), default=2048, help="tokens per step (default 2048)")
    p.add_argument("--max-model-len", type=positive(int), help="context limit (default: the model's)")
    p.add_argument("--max-queue", type=int, default=256,
                   help="requests that may wait beyond the running batch; more get 429 with Retry-After "
                        "(default 256)")
    p.add_argument("--tool-call-parser", default="hermes", choices=sorted(PARSERS),
                   help="hermes: <tool_call>{...}</tool_call> (Qwen, Hermes); llama3_json: Llama 3.x JSON calls "
                        "(default hermes)")
    p.add_argument("--reasoning-parser", choices=["qwen3"],
                   help="qwen3: a chat reply that opens with <think>...</think> gives that text as the OpenAI "
                        "message's `reasoning` (and `reasoning_content`), the rest as its content (default: none, "
                        "all content; Anthropic `thinking` splits it without this)")
    p.add_argument("--api-keys", help="file of 'KEY TENANT' lines: keys required, prefix cache split by tenant "
                                      "(default: open, one tenant)")
    p.add_argument("--public-prefix", action="append", default=[], metavar="FILE",
                   help="a text (e.g. a shared system prompt) whose KV all tenants may share (repeatable; "
                        "default: none)")
    add_limit_flags(p)
    p.add_argument("--compile", action="store_true", help="torch.compile the model forward (CUDA)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="uvicorn's log level (default info)")
    g = p.add_argument_group("replicas on Ray Serve (agentkv[ray])")
    g.add_argument("--replicas", type=positive(int), default=1,
                   help="engine replicas behind one endpoint, as a Ray Serve deployment (default 1: this process)")
    g.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                   help="the Ray cluster the replicas run on (no ADDRESS, or --replicas alone: a local one)")
    g.add_argument("--router", default="session", choices=ROUTERS,
                   help="how requests pick a replica, the simulator's routers: session (default: a session stays "
                        "on its replica, new ones go where their prefix is cached, then the least loaded), "
                        "prefix-aware, least-loaded, round-robin")
    p.set_defaults(run=cmd_serve)


def add_limit_flags(p: argparse.ArgumentParser) -> None:
    """What a public endpoint bounds (agentkv/server/limits.py), all in one block."""
    from agentkv.server.limits import Limits

    d = Limits()
    g = p.add_argument_group("limits (a public endpoint)")
    g.add_argument("--max-body-bytes", type=positive(int), default=d.max_body_bytes,
                   help=f"larger request bodies get 413 before they are read (default {d.max_body_bytes})")
    g.add_argument("--max-body-items", type=positive(int), default=d.max_body_items,
                   help="JSON objects, arrays and strings in a request body; more get 413, counted in a helper "
                        f"process before the server decodes the body (default {d.max_body_items})")
    g.add_argument("--max-tenant-inflight-bytes", type=positive(int), default=d.max_tenant_inflight_bytes,
                   help="request bytes one tenant may have in flight (bodies arriving, requests not yet answered); "
                        f"more get 429 with Retry-After (default {d.max_tenant_inflight_bytes})")
    g.add_argument("--max-prompt-chars", type=positive(int),
                   help="longer prompts (characters of text) get 400 before they are tokenized (default: 16 per "
                        "token of --max-model-len)")
    g.add_argument("--max-header-bytes", type=positive(int), default=d.max_header_bytes,
                   help=f"request line and headers (default {d.max_header_bytes})")
    g.add_argument("--header-timeout", type=positive(float), default=d.header_timeout_s, metavar="SECONDS",
                   help="a connection that has not sent a request's headers by then is closed, however slowly "
                        f"they trickle in (default {d.header_timeout_s:g})")
    g.add_argument("--body-timeout", type=positive(float), default=d.body_timeout_s, metavar="SECONDS",
                   help="a request whose body has not all arrived this long after its headers is cut off (default "
                        f"{d.body_timeout_s:g})")
    g.add_argument("--idle-timeout", type=positive(float), default=d.idle_timeout_s, metavar="SECONDS",
                   help=f"an idle keep-alive connection is closed after (default {d.idle_timeout_s:g})")
    g.add_argument("--max-connections", type=positive(int), default=d.max_connections,
                   help="open connections; past it a new one closes the oldest idle one, or gets 503 if none is "
                        f"idle (default {d.max_connections}, kept below the descriptor limit)")
    g.add_argument("--metrics-key-file", metavar="FILE",
                   help="a file holding the key /metrics, /openapi.json and /docs require (default: open, or "
                        "loopback clients only when --api-keys is given)")


def limits_of(args: argparse.Namespace):
    from agentkv.server.limits import Limits

    return Limits(max_body_bytes=args.max_body_bytes, max_prompt_chars=args.max_prompt_chars,
                  max_header_bytes=args.max_header_bytes, header_timeout_s=args.header_timeout,
                  body_timeout_s=args.body_timeout, idle_timeout_s=args.idle_timeout, max_connections=args.max_connections,
                  max_body_items=args.max_body_items, max_tenant_inflight_bytes=args.max_tenant_inflight_bytes)


def metrics_key(path: str | None) -> str | None:
    from agentkv.cli_errors import UsageError

    if path is None:
        return None
    key = Path(path).read_text().strip()
    if not key or len(key.split()) != 1:
        raise UsageError(f"--metrics-key-file {path}: expected one key on its own, found {len(key.split())} words")
    return key


def build(args: argparse.Namespace):
    """The app for these flags (its engine thread running): what tests start."""
    startup.check(args)
    return load(args)


def load(args: argparse.Namespace):
    """The app for flags `startup.check` passed: the model loaded, its engine thread running."""
    from agentkv.cli_errors import engine_error

    keys = startup.api_keys(args.api_keys)
    from agentkv.engine.async_llm import AsyncLLM
    from agentkv.engine.llm import LLM
    from agentkv.server.app import ServerConfig, create_app
    from agentkv.server.tenants import PublicPrefixes

    try:
        llm = LLM(args.model, dtype=args.dtype, device=args.device, compile=args.compile, policy=args.policy,
                  kv_codec=args.kv_codec, kv_cache_bytes=int(args.kv_cache_gb * 2**30) if args.kv_cache_gb else None,
                  kv_tiers=args.kv_tiers, block_size=args.block_size,
                  max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_batched_tokens)
    except ValueError as e:
        raise engine_error(e, args.kv_tiers) from None
    public = PublicPrefixes.load(args.public_prefix, llm.tokenizer) if args.public_prefix else None
    names = tuple(dict.fromkeys(args.served_model_name or [os.path.basename(os.path.normpath(args.model))]))
    name = names[0]
    window = args.max_model_len or llm.config.max_position_embeddings
    cfg = ServerConfig(model_name=name, aliases=names[1:], max_model_len=window, block_size=args.block_size,
                       vocab_size=llm.config.vocab_size, tool_parser=args.tool_call_parser,
                       reasoning_parser=args.reasoning_parser, api_keys=keys,
                       public=public, max_num_seqs=args.max_num_seqs, max_queue=args.max_queue,
                       limits=limits_of(args), metrics_key=metrics_key(args.metrics_key_file))
    print(startup.summary(llm, name, window, keys, len(args.public_prefix)), file=sys.stderr, flush=True)
    return create_app(AsyncLLM(llm), llm.tokenizer, cfg)


def cmd_serve(args: argparse.Namespace) -> int:
    on_ray = args.replicas > 1 or args.ray is not None
    if on_ray:
        from agentkv.cli import check_ray

        check_ray("--replicas" if args.replicas > 1 else "--ray")
    startup.check(args)
    metrics_key(args.metrics_key_file)
    if on_ray:
        return serve_on_ray(args)
    sock = startup.bind(args.host, args.port)
    return run(load(args), args, sockets=[sock])


def serve_on_ray(args: argparse.Namespace) -> int:
    """`--replicas N` / `--ray ADDRESS`: the replicas as a Ray Serve deployment behind a gateway here."""
    import uvicorn
    from ray import serve

    from agentkv.cluster.serve import APP, start
    from agentkv.server.guards import uvicorn_config

    sock = startup.bind(args.host, args.port)  # before the replicas load: a port in use fails at once
    app = start(args)
    try:  # the single server's connection guards (header size and time, slow bodies, the connection cap)
        uvicorn.Server(uvicorn_config(app, limits_of(args), host=args.host, port=args.port, log_level=args.log_level,
                                      timeout_graceful_shutdown=None)).run(sockets=[sock])
    finally:
        serve.delete(APP)  # on a shared cluster, the replicas go with their gateway
    return 0


def run(app, args: argparse.Namespace, sockets: list | None = None) -> int:
    """Serve `app` until a signal or until its engine loop fails: then exit 1 with one line, so that a
    supervisor restarts the process instead of leaving a server that answers 503 for ever."""
    import uvicorn

    from agentkv.server.guards import uvicorn_config

    server = uvicorn.Server(uvicorn_config(app, app.state.server.cfg.limits, host=args.host, port=args.port,
                                           log_level=args.log_level, timeout_graceful_shutdown=None))
    engine = app.state.server.engine

    def died(_: BaseException) -> None:
        server.should_exit = True

    engine.on_death = died
    server.run(sockets=sockets)
    if engine.error is not None:
        print(f"agentkv serve: the engine loop failed ({type(engine.error).__name__}: {engine.error}); exiting",
              file=sys.stderr)
        return 1
    return 0
