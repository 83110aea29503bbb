"""`agentkv serve`'s server: load a checkpoint, start the engine loop and serve it over HTTP with uvicorn (the flags
are agentkv/commands/serve.py's; the Ray replicas build the same app from them).

Every flag and file is checked, and the port bound, before the model loads (`startup`); once it is up, one
line says what is served. SIGTERM (or Ctrl-C) stops accepting connections, lets the requests in flight finish, drains the engine,
then ends by that signal (uvicorn re-raises it, so a supervisor sees a clean stop: status 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from agentkv.server import startup


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
    cfg = ServerConfig(model_name=name, aliases=names[1:], max_model_len=window, block_size=llm.block_size,
                       vocab_size=llm.config.vocab_size, tool_parser=args.tool_call_parser,
                       reasoning_parser=args.reasoning_parser, api_keys=keys,
                       public=public, max_num_seqs=args.max_num_seqs, max_queue=args.max_queue,
                       limits=limits_of(args), metrics_key=metrics_key(args.metrics_key_file))
    print(startup.summary(llm, name, window, keys, len(args.public_prefix)), file=sys.stderr, flush=True)
    return create_app(AsyncLLM(llm), llm.tokenizer, cfg)


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
