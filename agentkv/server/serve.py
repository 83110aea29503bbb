"""`agentkv serve`: load a checkpoint, start the engine loop and serve it over HTTP with uvicorn.

SIGTERM (or Ctrl-C) stops accepting connections, lets the requests in flight finish, drains the engine,
then ends by that signal (uvicorn re-raises it, so a supervisor sees a clean stop: status 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import os

from agentkv.cli_errors import positive
from agentkv.server.tool_parsers import PARSERS
from agentkv.sim.router import ROUTERS


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI- and Anthropic-compatible HTTP server over a local checkpoint")
    p.add_argument("--model", required=True, help="folder with config.json, safetensors and tokenizer.json")
    p.add_argument("--served-model-name", help="the name clients send as 'model' (default: the folder's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default 8000)")
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
    p.add_argument("--api-keys", help="file of 'KEY TENANT' lines: keys required, prefix cache split by tenant "
                                      "(default: open, one tenant)")
    p.add_argument("--public-prefix", action="append", default=[], metavar="FILE",
                   help="a text (e.g. a shared system prompt) whose KV all tenants may share (repeatable; "
                        "default: none)")
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


def build(args: argparse.Namespace):
    """The app for these flags (its engine thread running): what `cmd_serve` runs and tests start."""
    from agentkv.cli_errors import UsageError, check_device, check_model_dir

    check_model_dir(args.model)
    check_device(args.device)
    if args.max_queue < 0:
        raise UsageError(f"--max-queue must be >= 0, got {args.max_queue}")
    from agentkv.engine.async_llm import AsyncLLM
    from agentkv.engine.llm import LLM
    from agentkv.server.app import ServerConfig, create_app
    from agentkv.server.tenants import PublicPrefixes, load_api_keys

    keys = load_api_keys(args.api_keys) if args.api_keys else None
    llm = LLM(args.model, dtype=args.dtype, device=args.device, compile=args.compile, policy=args.policy,
              kv_codec=args.kv_codec, kv_cache_bytes=int(args.kv_cache_gb * 2**30) if args.kv_cache_gb else None,
              kv_tiers=args.kv_tiers, block_size=args.block_size,
              max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_batched_tokens)
    limit = llm.config.max_position_embeddings
    if args.max_model_len is not None and not 1 < args.max_model_len <= limit:
        raise UsageError(f"--max-model-len must be in [2, {limit}] (the model's context), got {args.max_model_len}")
    public = PublicPrefixes.load(args.public_prefix, llm.tokenizer) if args.public_prefix else None
    cfg = ServerConfig(model_name=args.served_model_name or os.path.basename(os.path.normpath(args.model)),
                       max_model_len=args.max_model_len or limit, block_size=args.block_size,
                       vocab_size=llm.config.vocab_size, tool_parser=args.tool_call_parser, api_keys=keys,
                       public=public, max_num_seqs=args.max_num_seqs, max_queue=args.max_queue)
    return create_app(AsyncLLM(llm), llm.tokenizer, cfg)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    if args.replicas == 1 and args.ray is None:
        uvicorn.run(build(args), host=args.host, port=args.port, log_level=args.log_level,
                    timeout_graceful_shutdown=None)
        return 0
    from agentkv.cli import check_ray
    from agentkv.cli_errors import check_model_dir

    check_ray("--replicas" if args.replicas > 1 else "--ray")
    check_model_dir(args.model)
    from ray import serve

    from agentkv.cluster.serve import APP, start

    app = start(args)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_graceful_shutdown=None)
    finally:
        serve.delete(APP)  # on a shared cluster, the replicas go with their gateway
    return 0
