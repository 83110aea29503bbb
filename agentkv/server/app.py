"""The HTTP server: OpenAI (/v1/chat/completions, /v1/completions, /v1/responses, /v1/models) and Anthropic
(/v1/messages, /v1/models in its own shape) APIs over one engine, with /health and Prometheus /metrics.

Here: the app's wiring, its middleware (API keys, request ids, body limits, tenants' bytes in flight) and
what the server owns (tenants, model names, the tokenizer endpoints). Each API is an adapter module (`api_chat`,
`api_completions`, `api_messages`, `api_responses`): its `to_request` makes the body an `Ask`, the one
pipeline (`pipeline.py`) renders, constrains, checks and admits it, and its renderer shapes the events of
the one reply state machine (`reply.py`) as the API's reply, streamed as server-sent events or whole.
Every response carries `request-id` and `x-request-id`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from agentkv.server import anthropic_protocol as anth
from agentkv.server import api_chat, api_completions, api_messages, errors
from agentkv.server import openai_protocol as oai
from agentkv.server.api_responses import Responses
from agentkv.server.bodies import components, documented, parsed
from agentkv.server.census import Census
from agentkv.server.chat import anthropic_messages, openai_messages
from agentkv.server.errors import APIError
from agentkv.server.guards import RequestLimits
from agentkv.server.jobs import Jobs
from agentkv.server.limits import Limits
from agentkv.server.metrics import Metrics
from agentkv.server.pipeline import Ask, Pipeline
from agentkv.server.responses_protocol import ResponsesRequest
from agentkv.server.tenant_bytes import TenantBytes
from agentkv.server.tenants import PublicPrefixes

ADMIN_PATHS = ("/metrics", "/openapi.json", "/docs", "/redoc")  # other tenants' traffic, the API's shape
API_PATHS = ("/v1/", "/tokenize", "/detokenize")  # a tenant's key opens them
REQUEST_BODIES = (oai.ChatCompletionRequest, oai.CompletionRequest, anth.MessagesRequest, anth.CountTokensRequest,
                  ResponsesRequest, oai.TokenizeRequest, oai.DetokenizeRequest)  # parsed off the event loop
ChatBody, CompletionBody, MessagesBody, CountTokensBody, ResponsesBody, TokenizeBody, DetokenizeBody = (
    parsed(m) for m in REQUEST_BODIES)


@dataclass(slots=True)
class ServerConfig:
    model_name: str
    max_model_len: int
    block_size: int
    vocab_size: int
    aliases: tuple[str, ...] = ()  # more names clients may ask for (agents ask for their own)
    tool_parser: str = "hermes"
    reasoning_parser: str | None = None  # OpenAI chat: <think>...</think> as the message's `reasoning`
    api_keys: dict[str, str] | None = None  # key -> tenant; None: open, one tenant
    public: PublicPrefixes | None = None
    max_num_seqs: int = 64
    max_queue: int = 256
    limits: Limits = field(default_factory=Limits)
    metrics_key: str | None = None  # /metrics, /openapi.json, /docs need it; with api_keys and none: loopback only


def create_app(engine: Any, tokenizer: Any, cfg: ServerConfig) -> FastAPI:
    server = Server(engine, tokenizer, cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await asyncio.to_thread(app.state.census.start)
        yield
        app.state.census.close()
        engine.shutdown(drain=True)  # uvicorn has let the requests in flight finish first
        engine.llm.close()  # lower tiers finish their writes (a disk tier keeps its index for the next start)

    app = FastAPI(title="agentkv", version="0.1.0", lifespan=lifespan,
                  description="OpenAI- and Anthropic-compatible serving over agentkv's engine")
    app.state.server = server
    app.state.census = Census(cfg.limits.max_body_items, cfg.max_model_len + cfg.limits.max_body_items)
    errors.install(app)

    @app.get("/health", responses={503: {"description": "the engine loop failed; the process is exiting"}})
    async def health() -> Response:
        if engine.error is not None:
            return JSONResponse({"status": "error", "error": f"the engine failed: {engine.error}"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(TenantBytes, budget=cfg.limits.max_tenant_inflight_bytes)
    app.add_middleware(RequestLimits, max_bytes=cfg.limits.max_body_bytes, max_header_bytes=cfg.limits.max_header_bytes)
    app.add_middleware(_Authenticate, server=server)
    errors.document_400(app, components(list(REQUEST_BODIES)))
    app.add_middleware(_RequestId)
    _api_routes(app, server)
    return app


def _api_routes(app: FastAPI, server: Server) -> None:
    """The APIs' endpoints: each hands its body to its adapter (or to the server, for what is the server's own)."""

    @app.get("/v1/models", responses={200: {"model": oai.ModelList}})
    async def models(request: Request) -> Response:
        return JSONResponse(server.models(request).model_dump())

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> Response:
        server.pipe.check_model(model_id)
        return JSONResponse(next(m for m in server.models(request).data if m.id == model_id).model_dump())

    @app.post("/v1/responses", openapi_extra=documented(ResponsesRequest))
    async def create_response(request: Request, body: ResponsesBody) -> Response:
        return await server.responses.handle(body, request, request.state.tenant)

    @app.get("/v1/responses/{response_id}")
    async def get_response(response_id: str, request: Request) -> Response:
        return JSONResponse(server.responses.get(response_id, request.state.tenant))

    @app.post("/v1/chat/completions", responses={200: {"model": oai.ChatCompletion}},
              openapi_extra=documented(oai.ChatCompletionRequest))
    async def chat_completions(request: Request,
                               body: ChatBody) -> Response:
        return await api_chat.handle(server.pipe, body, request, request.state.tenant)

    @app.post("/v1/completions", responses={200: {"model": oai.Completion}},
              openapi_extra=documented(oai.CompletionRequest))
    async def completions(request: Request, body: CompletionBody) -> Response:
        return await api_completions.handle(server.pipe, body, request, request.state.tenant)

    @app.post("/v1/messages", responses={200: {"model": anth.MessagesResponse}},
              openapi_extra=documented(anth.MessagesRequest))
    async def messages(request: Request, body: MessagesBody) -> Response:
        return await api_messages.handle(server.pipe, body, request, request.state.tenant)

    @app.post("/tokenize", openapi_extra=documented(oai.TokenizeRequest))
    async def tokenize(body: TokenizeBody) -> dict[str, Any]:
        return await server.tokenize(body)

    @app.post("/detokenize", openapi_extra=documented(oai.DetokenizeRequest))
    async def detokenize(body: DetokenizeBody) -> dict[str, str]:
        return await asyncio.to_thread(server.detokenize, body)  # millions of ids take seconds: not on the loop

    @app.post("/v1/messages/count_tokens", openapi_extra=documented(anth.CountTokensRequest))
    async def count_tokens(body: CountTokensBody) -> dict[str, int]:
        return {"input_tokens": len(await server.count_tokens(body))}


class _Authenticate:
    """API keys are checked before anything else reads the request: a stranger learns nothing of the body's
    faults. The tenant goes in the request's state. /metrics and the API's schema and docs show every tenant's
    traffic: with keys on they take the metrics key, or without one only loopback clients."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith((*API_PATHS, *ADMIN_PATHS)):
            request = Request(scope)
            try:
                if scope["path"].startswith(API_PATHS):
                    scope.setdefault("state", {})["tenant"] = self.server.tenant(request)
                else:
                    self.server.admin(request)
            except APIError as e:
                await errors.error_response(request, e)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _RequestId:
    """`request-id` (Anthropic's header) and `x-request-id` (OpenAI's) on every response: the client's own
    `x-request-id` when it sent one, else a fresh id, so a client's log line finds the server's."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")[:128]
        rid = (given or f"req_{secrets.token_hex(12)}").encode("latin-1")

        async def with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"request-id", rid), (b"x-request-id", rid)]
            await send(message)

        await self.app(scope, receive, with_id)


class Server:
    """What is the server's own: who may ask (tenants, admin), what it serves, its tokenizer endpoints; each
    API's endpoint is an adapter (`api_*.py`) over the one pipeline."""

    def __init__(self, engine: Any, tokenizer: Any, cfg: ServerConfig) -> None:
        self.engine, self.tokenizer, self.cfg = engine, tokenizer, cfg
        self.metrics = Metrics(engine.stats)
        self.jobs = Jobs(engine, self.metrics, cfg.max_num_seqs, cfg.max_queue)
        self.pipe = Pipeline(engine, tokenizer, cfg, self.jobs)
        self.started = int(time.time())
        self.responses = Responses(self.pipe)

    def models(self, request: Request) -> oai.ModelList | anth.ModelList:
        """Every served name, in the shape of the asking client's API (Anthropic's sends anthropic-version)."""
        names = self.pipe.names
        if "anthropic-version" in request.headers:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started))
            data = [anth.ModelInfo(id=n, display_name=n, created_at=stamp) for n in names]
            return anth.ModelList(data=data, first_id=data[0].id, last_id=data[-1].id)
        return oai.ModelList(data=[oai.ModelCard(id=n, created=self.started, root=self.cfg.model_name,
                                                 max_model_len=self.cfg.max_model_len) for n in names])

    def tenant(self, request: Request) -> str:
        return tenant_of(request, self.cfg.api_keys)

    def admin(self, request: Request) -> None:
        check_admin(request, self.cfg.metrics_key, self.cfg.api_keys is not None)

    # ---- token counting, and vLLM's tokenizer endpoints ---------------------------------------------------
    async def count_tokens(self, body: anth.CountTokensRequest) -> list[int]:
        self.pipe.check_model(body.model)
        msgs, tools = anthropic_messages(body)
        return await self.pipe.prompt(Ask("messages", body.model, messages=msgs, tools=tools))

    async def tokenize(self, body: oai.TokenizeRequest) -> dict[str, Any]:
        if body.model is not None:
            self.pipe.check_model(body.model)
        if body.messages is not None:
            msgs, tools = openai_messages(body)
            template = {"add_generation_prompt": body.add_generation_prompt,
                        "add_special_tokens": bool(body.add_special_tokens), **(body.chat_template_kwargs or {})}
            ask = Ask("chat", body.model or "", messages=msgs, tools=tools, template=template)
        else:
            ask = Ask("completions", body.model or "", prompt=body.prompt or "", param="prompt",
                      add_special_tokens=body.add_special_tokens is not False)
        ids = await self.pipe.prompt(ask)
        strs = [self.tokenizer.token_str(i) or "" for i in ids] if body.return_token_strs else None
        return {"count": len(ids), "max_model_len": self.cfg.max_model_len, "tokens": ids, "token_strs": strs}

    def detokenize(self, body: oai.DetokenizeRequest) -> dict[str, str]:
        if body.model is not None:
            self.pipe.check_model(body.model)
        if self.tokenizer is None:
            raise APIError(400, "the model folder has no tokenizer.json: nothing to detokenize with")
        self.pipe.check_ids("tokens", body.tokens)
        return {"prompt": self.tokenizer.decode(body.tokens)}


def tenant_of(request: Request, api_keys: dict[str, str] | None) -> str:
    """The tenant whose key the request carries ("" when the server is open); APIError 401 if none is known.
    The single server and the Ray gateway both ask here."""
    if api_keys is None:
        return ""
    tenant = api_keys.get(_key(request))
    if tenant is None:
        raise APIError(401, "missing or unknown API key (send 'Authorization: Bearer KEY' or 'x-api-key: KEY')",
                       code="invalid_api_key")
    return tenant


def check_admin(request: Request, metrics_key: str | None, keys_on: bool) -> None:
    """May this client read /metrics and the API's schema? (APIError if not.)"""
    if metrics_key is not None:
        if not secrets.compare_digest(_key(request).encode(), metrics_key.encode()):
            raise APIError(401, "this path needs the metrics key (--metrics-key-file)", code="invalid_api_key")
    elif keys_on and not _loopback(request):
        raise APIError(403, "with API keys on, this path answers loopback clients only (or give the server "
                       "--metrics-key-file)", code="forbidden")


def _loopback(request: Request) -> bool:
    try:
        return request.client is not None and ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


def _key(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
