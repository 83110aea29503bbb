"""`agentkv serve --replicas N [--ray ADDRESS]`: N engine replicas as one Ray Serve deployment, behind a
gateway that serves the same OpenAI and Anthropic endpoints.

Each replica is the single-process server (`server.serve.build`: engine, FastAPI app, tenants, metrics), run
by Ray Serve and called over ASGI with the whole HTTP request. The gateway (this process) reads a request
and renders its prompt with the replica's own `to_request` (server/apis.py: chat, completions, Responses,
Anthropic messages; the API key and cache_salt as the namespace) to know its blocks and session, then
calls the deployment through a handle whose request router (`routing.AgentRouter`) decides with agentkv's
own router. The reply streams back unchanged, with the replica's name in
`x-agentkv-replica`. A replica that dies before its reply started is retried on another (Ray Serve
replaces the dead one); after the first byte the stream ends with an in-band error; nothing waits on a dead
replica. `/metrics` sums every replica's series (their routing stats carry the page) and adds
`agentkv_replicas`.

The gateway keeps every limit the single server has, in front of the replicas: API keys and the metrics key
(checked before a body is read), body and header sizes (`RequestLimits`), slow headers and bodies and the
connection cap (its uvicorn runs the same guarded protocol), and the prompt's characters before it
tokenizes one to route it. Ray Serve's own HTTP proxy is not started (the gateway is the only front), so
:8000 is left alone whatever `--port` says.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import serve
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agentkv.cluster.routing import LIVE, AgentRouter, Routed, finished
from agentkv.kvcache.block_hash import block_hashes, salt_hash
from agentkv.server.limits import text_chars

APP = "agentkv"
REPLICA_HEADER = "x-agentkv-replica"
STREAM_ENDS = (b"data: [DONE]", b"event: message_stop", b"event: response.completed",
               b"event: response.incomplete")  # a stream's last event: OpenAI, Anthropic, the Responses API
STATS_PERIOD_S = 1.0  # how often each replica's KV capacity and metrics page reach the router


@dataclass(slots=True)
class HttpCall:
    """One HTTP request, whole, as the gateway hands it to a replica."""

    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    route: Routed


class EngineReplica:
    """One engine and its HTTP app; Ray Serve runs N of these."""

    def __init__(self, args: argparse.Namespace) -> None:
        from agentkv.server.serve import build

        self.app = build(args)
        self.name = serve.get_replica_context().replica_id.unique_id

    async def call(self, req: HttpCall) -> AsyncIterator[Any]:
        """Yields the response's status and headers, then its body chunks, as the app sends them."""
        out: asyncio.Queue = asyncio.Queue()
        gone = asyncio.Event()
        body = [{"type": "http.request", "body": req.body, "more_body": False}]

        async def receive() -> dict:
            if body:
                return body.pop()
            await gone.wait()  # the caller dropped the stream: the app aborts the request
            return {"type": "http.disconnect"}

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": req.method,
                 "scheme": "http", "path": req.path, "raw_path": req.path.encode(), "query_string": req.query,
                 "root_path": "", "headers": req.headers, "client": ("127.0.0.1", 0), "server": ("ray", 0)}
        task = asyncio.create_task(self.app(scope, receive, out.put))
        try:
            while True:
                msg = await out.get()
                if msg["type"] == "http.response.start":
                    yield (msg["status"], [*msg.get("headers", []), (REPLICA_HEADER.encode(), self.name.encode())])
                elif msg["type"] == "http.response.body":
                    if msg.get("body"):
                        yield msg["body"]
                    if not msg.get("more_body"):
                        break
        finally:
            gone.set()
            await task

    def record_routing_stats(self) -> dict[str, Any]:
        server = self.app.state.server
        return {"kv_blocks": int(server.engine.stats().kv_blocks_total.get("gpu", 0)),
                "metrics": server.metrics.render().decode()}


def deployment(args: argparse.Namespace):
    """`args.replicas` engines, each admitting what one server admits, routed by `args.router`; one GPU each
    where the engine runs on CUDA (`--device cuda`, or no --device on a cluster with GPUs), else one CPU."""
    import ray
    from ray.serve.config import RequestRouterConfig

    cuda = args.device.startswith("cuda") if args.device else ray.cluster_resources().get("GPU", 0) > 0
    return serve.deployment(EngineReplica, name="EngineReplica", num_replicas=args.replicas,
                            ray_actor_options={"num_gpus": 1, "num_cpus": 0} if cuda else {"num_cpus": 1},
                            max_ongoing_requests=args.max_num_seqs + args.max_queue, health_check_period_s=1.0,
                            request_router_config=RequestRouterConfig(
                                request_router_class=AgentRouter,
                                request_router_kwargs={"router": args.router, "block_size": block_size_of(args)},
                                request_routing_stats_period_s=STATS_PERIOD_S),
                            ).bind(args)


def block_size_of(args: argparse.Namespace) -> int:
    """The replicas' block size (`--block-size`, or what the model needs), for routing by block."""
    from agentkv.engine.block_size import block_size_for
    from agentkv.model.config import ModelConfig

    return block_size_for(ModelConfig.from_dir(args.model).v4, args.block_size).tokens


class _TenantOf:
    """The request's tenant in its state, where `TenantBytes` reads it, so the gateway caps a tenant's bytes in
    flight as the single server does (not once per replica); a bad key is left to `Gateway.forward`'s 401."""

    def __init__(self, app: Any, api_keys: dict[str, str] | None) -> None:
        self.app, self.api_keys = app, api_keys

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        from agentkv.server.app import API_PATHS, tenant_of
        from agentkv.server.errors import APIError

        if scope["type"] == "http" and scope["path"].startswith(API_PATHS):
            with contextlib.suppress(APIError):
                scope.setdefault("state", {})["tenant"] = tenant_of(Request(scope), self.api_keys)
        await self.app(scope, receive, send)


class Gateway:
    """The HTTP front: every path goes to a replica the router picks, except /health and /metrics."""

    def __init__(self, handle: Any, args: argparse.Namespace) -> None:
        from agentkv.engine.tokenizer import Tokenizer
        from agentkv.model.config import ModelConfig
        from agentkv.server.census import Census
        from agentkv.server.pipeline import PROMPT_CHARS_PER_TOKEN
        from agentkv.server.serve import limits_of, metrics_key
        from agentkv.server.startup import api_keys

        self.handle = handle.options(stream=True)
        self.block_size = block_size_of(args)
        self.router = args.router
        self.reasoning_parser = args.reasoning_parser
        self.limits = limits_of(args)
        self.api_keys, self.metrics_key = api_keys(args.api_keys), metrics_key(args.metrics_key_file)
        window = args.max_model_len or ModelConfig.from_dir(args.model).max_position_embeddings
        self.max_prompt_chars = self.limits.max_prompt_chars or PROMPT_CHARS_PER_TOKEN * window
        self.census = Census(self.limits.max_body_items, window + self.limits.max_body_items)  # before routing
        try:
            self.tokenizer: Tokenizer | None = Tokenizer(args.model)
        except FileNotFoundError:
            self.tokenizer = None  # token-id prompts only; the replicas say so to text ones

    def warm_up(self) -> None:
        """One /health through the handle: its router exists from now on (the stats it collects answer
        /health and /metrics), and a replica has answered."""
        probe = HttpCall("GET", "/health", b"", [], b"", Routed(None, np.zeros(0, dtype=np.int64), 0, 0))
        for _ in self.handle.call.remote(probe):
            pass

    def app(self) -> Starlette:
        from agentkv.server import errors
        from agentkv.server.guards import RequestLimits
        from agentkv.server.tenant_bytes import TenantBytes

        app = Starlette(routes=[Route("/health", self.health), Route("/metrics", self.metrics),
                                Route("/{path:path}", self.forward, methods=["GET", "POST"])],
                        middleware=[Middleware(RequestLimits, max_bytes=self.limits.max_body_bytes,
                                               max_header_bytes=self.limits.max_header_bytes),
                                    Middleware(_TenantOf, api_keys=self.api_keys),
                                    Middleware(TenantBytes, budget=self.limits.max_tenant_inflight_bytes)])
        errors.install(app)
        return app

    async def health(self, request: Request) -> Response:
        up = len(self._stats())
        return JSONResponse({"status": "ok" if up else "starting", "replicas": up}, status_code=200 if up else 503)

    async def metrics(self, request: Request) -> Response:
        from agentkv.server.app import check_admin
        from agentkv.server.errors import APIError, error_response

        try:
            check_admin(request, self.metrics_key, self.api_keys is not None)
        except APIError as e:
            return error_response(request, e)
        pages = [s.get("metrics", "") for s in self._stats().values()]
        fleet = f'# TYPE agentkv_replicas gauge\nagentkv_replicas{{router="{self.router}"}} {len(pages)}\n'
        return Response(sum_metrics(pages) + fleet, media_type="text/plain; version=0.0.4")

    def _stats(self) -> dict[str, dict[str, Any]]:
        return {k: v for r in LIVE for k, v in r.replica_stats().items() if v}

    async def forward(self, request: Request) -> Response:
        from agentkv.server.app import ADMIN_PATHS, API_PATHS, check_admin, tenant_of
        from agentkv.server.errors import APIError, error_response

        try:  # a stranger's body is neither read nor tokenized
            if request.url.path.startswith(API_PATHS):
                tenant_of(request, self.api_keys)
            elif request.url.path.startswith(ADMIN_PATHS):
                check_admin(request, self.metrics_key, self.api_keys is not None)
        except APIError as e:
            return error_response(request, e)
        try:
            body = await request.body()
        except ClientDisconnect:  # gone, or cut off by --body-timeout: there is no one to answer
            return Response(status_code=499)
        try:  # a body too large to decode at a bounded cost is refused before the gateway parses it to route
            await self.census.check(body)
        except APIError as e:
            return error_response(request, e)
        call = HttpCall(request.method, request.url.path, request.url.query.encode(), request.headers.raw, body,
                        await asyncio.to_thread(self.route, request, body))
        retries = 1  # a replica that dies before answering: once more, on another
        while True:
            stream = self.handle.call.remote(call)
            try:
                status, headers = await stream.__anext__()
            except Exception as e:
                if retries and _replica_died(e):
                    retries -= 1
                    continue
                finished(call.route)
                return _unavailable(request, e)
            return StreamingResponse(_rest(stream, request, call.route), status_code=status,
                                     headers=_headers(headers))

    def route(self, request: Request, body: bytes) -> Routed:
        """The request's session, blocks and size as the router weighs them, from the same `to_request` the
        replica's endpoint runs (empty blocks if its body is not one the gateway can render: the replica
        answers it with the proper 4xx)."""
        from agentkv.server.apis import ask_of
        from agentkv.server.pipeline import Context, encode

        key = request.headers.get("authorization") or request.headers.get("x-api-key") or ""
        prompt: list[int] = []
        session, max_tokens, salt = request.headers.get("x-session-id"), 0, _field(body, "cache_salt")
        with contextlib.suppress(Exception):  # anything unparsable is the replica's to refuse
            ask = ask_of(request.url.path, body, request.headers, Context(self.tokenizer, self.reasoning_parser))
            if ask is not None:
                session, max_tokens, salt = ask.session, ask.max_tokens or 0, ask.salt
                text = ask.messages if ask.messages is not None else ask.prompt
                if text_chars(text) + text_chars(ask.tools) <= self.max_prompt_chars:  # else: the replica's 400
                    prompt = encode(ask, self.tokenizer)
        ids = block_hashes(prompt, self.block_size, salt_hash(f"{key}\x00{salt}")) if prompt \
            else np.zeros(0, dtype=np.int64)
        return Routed(f"{key}/{session}" if session else None, ids, len(prompt), len(prompt) + max_tokens)


def _field(body: bytes, name: str) -> str:
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body).get(name) or "")
    return ""


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in raw if k.lower() not in (b"content-length", b"transfer-encoding")}


async def _rest(stream: Any, request: Request, route: Routed) -> AsyncIterator[bytes]:
    """The body after the first chunk; a replica lost mid-stream ends it with the API's in-band error. The
    router learns the request is done before the client can see its end (routing.finished)."""
    try:
        async for chunk in stream:
            if _ends_stream(chunk):  # the client may send its next request on reading it
                finished(route)
            yield chunk
    except Exception as e:
        msg = f"replica lost mid-stream: {type(e).__name__}"
        if request.url.path.startswith("/v1/messages"):
            yield (f"event: error\ndata: {json.dumps({'type': 'error', 'error': {'type': 'api_error', 'message': msg}})}"
                   "\n\n").encode()
        else:
            yield f"data: {json.dumps({'error': {'message': msg, 'type': 'server_error'}})}\n\n".encode()
    finally:
        finished(route)
        stream.cancel()  # a client gone: the replica sees a disconnect and frees the request's KV


def _ends_stream(chunk: bytes) -> bool:
    return any(chunk.startswith(end) or b"\n" + end in chunk for end in STREAM_ENDS)


def _replica_died(e: BaseException) -> bool:
    from ray.exceptions import ActorUnavailableError, RayActorError

    return isinstance(e, RayActorError | ActorUnavailableError)


def _unavailable(request: Request, e: BaseException) -> Response:
    from agentkv.server.errors import APIError, error_response

    return error_response(request, APIError(503, f"no replica could answer: {type(e).__name__}",
                                            code="replica_unavailable", headers={"Retry-After": "1"}))


_SERIES = re.compile(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?)\s+(\S+)$")


def sum_metrics(pages: list[str]) -> str:
    """One Prometheus page from several: every series summed over the replicas (counters, gauges and histogram
    buckets all add up across replicas); `_created` timestamps dropped, comments kept from the first page."""
    totals: dict[str, float] = {}
    comments: dict[str, None] = {}
    for page in pages:
        for line in page.splitlines():
            if line.startswith("#") and not line.split()[2].endswith("_created"):
                comments.setdefault(line)
            elif (m := _SERIES.match(line)) and "_created" not in m.group(1):
                totals[m.group(1)] = totals.get(m.group(1), 0.0) + float(m.group(2))
    families: dict[str, list[str]] = {}
    for c in comments:
        families.setdefault(c.split()[2], []).append(c)
    out = []
    for name, lines in families.items():
        out += lines
        out += [f"{k} {v:g}" for k, v in totals.items() if re.match(rf"{name}(_bucket|_count|_sum|_total)?(\{{|$)", k)]
    return "\n".join(out) + "\n"


def start(args: argparse.Namespace) -> Starlette:
    """Start (or join, at --ray ADDRESS) a Ray cluster, deploy the replicas and return the gateway's app."""
    from agentkv.cluster.tasks import LOCAL, connect

    connect(args.ray or LOCAL, num_cpus=max(os.cpu_count() or 1, args.replicas))  # a local cluster fits them all
    serve.start(proxy_location="Disabled")  # the gateway is the front: Ray's proxy would take :8000
    gateway = Gateway(serve.run(deployment(args), name=APP, route_prefix=None), args)
    gateway.warm_up()
    return gateway.app()
