"""`agentkv serve`: the flags, checked (and the port bound) before the model loads; one process, or replicas on
Ray Serve behind a gateway here. What the flags build is `server/serve.py`'s."""

from __future__ import annotations

import argparse

from agentkv.cli_errors import positive
from agentkv.commands.flags import check_ray
from agentkv.server import startup
from agentkv.server.serve import limits_of, load, metrics_key, run
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
    p.add_argument("--block-size", type=positive(int),
                   help="tokens per KV block (default 16, or what the model needs: for DeepSeek-V4 the least "
                        "multiple of its compression ratios above 16)")
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


def cmd_serve(args: argparse.Namespace) -> int:
    on_ray = args.replicas > 1 or args.ray is not None
    if on_ray:
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
