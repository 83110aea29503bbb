"""The HTTP server: OpenAI (/v1/chat/completions, /v1/completions, /v1/responses, /v1/models) and Anthropic
(/v1/messages, /v1/models in its own shape) APIs over one engine, with /health and Prometheus /metrics.

Each endpoint turns its request into prompt token ids (through the model's chat template, tools included)
and `SamplingParams`, admits it (`Jobs`), and writes the engine's deltas back in its API's shape, streamed as
server-sent events or whole. The tenant (from the API key) and `cache_salt` scope the request's prefix-cache
namespace; a reply's tool calls are parsed as it streams, and whether it called a tool reaches the cache
policy before its blocks are released (`classify_reply`). A forced tool call or a JSON reply is held to its
schema by the grammar engine (server/structured.py). Every response carries `request-id` and `x-request-id`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST

from agentkv.engine.grammar import StructuredOutputsParams
from agentkv.engine.sequence import SamplingParams
from agentkv.server import anthropic_protocol as anth
from agentkv.server import errors
from agentkv.server import openai_protocol as oai
from agentkv.server.chat import Messages, Tools, anthropic_messages, openai_messages
from agentkv.server.errors import APIError
from agentkv.server.guards import RequestLimits
from agentkv.server.jobs import Jobs, Result
from agentkv.server.limits import Limits, text_chars
from agentkv.server.metrics import Metrics
from agentkv.server.responses import Responses, ResponsesRequest
from agentkv.server.structured import forced_call, json_reply
from agentkv.server.tenants import PublicPrefixes
from agentkv.server.thinking import ThinkingSplitter
from agentkv.server.thinking import split as split_thinking
from agentkv.server.tool_parsers import Parsed, feed, make_parser, parse_all

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
log = logging.getLogger("agentkv.server")
GREEDY_BELOW = 1e-5  # temperatures this small are greedy (dividing logits by them overflows)
PROMPT_CHARS_PER_TOKEN = 16  # default prompt limit in characters per token of context (text averages ~4)
ADMIN_PATHS = ("/metrics", "/openapi.json", "/docs", "/redoc")  # other tenants' traffic, the API's shape
API_PATHS = ("/v1/", "/tokenize", "/detokenize")  # a tenant's key opens them


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


@dataclass(slots=True)
class Prepared:
    """A request as the engine takes it, with what the response needs to shape its answer."""

    prompt: list[int]
    params: SamplingParams
    tenant: str
    salt: str
    session: str | None
    tools: bool
    model: str  # the name the client asked for, echoed in the response


def create_app(engine: Any, tokenizer: Any, cfg: ServerConfig) -> FastAPI:
    server = Server(engine, tokenizer, cfg)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        engine.shutdown(drain=True)  # uvicorn has let the requests in flight finish first
        engine.llm.close()  # lower tiers finish their writes (a disk tier keeps its index for the next start)

    app = FastAPI(title="agentkv", version="0.1.0", lifespan=lifespan,
                  description="OpenAI- and Anthropic-compatible serving over agentkv's engine")
    app.state.server = server
    errors.install(app)

    @app.get("/health", responses={503: {"description": "the engine loop failed; the process is exiting"}})
    async def health() -> Response:
        if engine.error is not None:
            return JSONResponse({"status": "error", "error": f"the engine failed: {engine.error}"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", response_class=Response)
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(RequestLimits, max_bytes=cfg.limits.max_body_bytes, max_header_bytes=cfg.limits.max_header_bytes)
    app.add_middleware(_Authenticate, server=server)
    errors.document_400(app)
    app.add_middleware(_RequestId)

    @app.get("/v1/models", responses={200: {"model": oai.ModelList}})
    async def models(request: Request) -> Response:
        return JSONResponse(server.models(request).model_dump())

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> Response:
        server.check_model(model_id)
        return JSONResponse(next(m for m in server.models(request).data if m.id == model_id).model_dump())

    @app.post("/v1/responses")
    async def create_response(body: ResponsesRequest, request: Request) -> Response:
        out = await server.responses.create(body, request, request.state.tenant)
        return out if isinstance(out, Response) else _sse_response(out, anthropic=False)

    @app.get("/v1/responses/{response_id}")
    async def get_response(response_id: str, request: Request) -> Response:
        return JSONResponse(server.responses.get(response_id, request.state.tenant))

    @app.post("/v1/chat/completions", responses={200: {"model": oai.ChatCompletion}})
    async def chat_completions(body: oai.ChatCompletionRequest, request: Request) -> Response:
        return await server.chat(body, request, request.state.tenant)

    @app.post("/v1/completions", responses={200: {"model": oai.Completion}})
    async def completions(body: oai.CompletionRequest, request: Request) -> Response:
        return await server.completion(body, request, request.state.tenant)

    @app.post("/v1/messages", responses={200: {"model": anth.MessagesResponse}})
    async def messages(body: anth.MessagesRequest, request: Request) -> Response:
        return await server.messages(body, request, request.state.tenant)

    @app.post("/tokenize")
    async def tokenize(body: oai.TokenizeRequest) -> dict[str, Any]:
        return await server.tokenize(body)

    @app.post("/detokenize")
    async def detokenize(body: oai.DetokenizeRequest) -> dict[str, str]:
        return server.detokenize(body)

    @app.post("/v1/messages/count_tokens")
    async def count_tokens(body: anth.CountTokensRequest) -> dict[str, int]:
        server.check_model(body.model)
        msgs, tools = anthropic_messages(body)
        return {"input_tokens": len(await server.render(msgs, tools))}

    return app


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
    def __init__(self, engine: Any, tokenizer: Any, cfg: ServerConfig) -> None:
        self.engine, self.tokenizer, self.cfg = engine, tokenizer, cfg
        self.metrics = Metrics(engine.stats)
        self.jobs = Jobs(engine, self.metrics, cfg.max_num_seqs, cfg.max_queue)
        self.started = int(time.time())
        self.max_prompt_chars = cfg.limits.max_prompt_chars or PROMPT_CHARS_PER_TOKEN * cfg.max_model_len
        self.responses = Responses(self)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.cfg.model_name, *self.cfg.aliases)

    def models(self, request: Request) -> oai.ModelList | anth.ModelList:
        """Every served name, in the shape of the asking client's API (Anthropic's sends anthropic-version)."""
        if "anthropic-version" in request.headers:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started))
            data = [anth.ModelInfo(id=n, display_name=n, created_at=stamp) for n in self.names]
            return anth.ModelList(data=data, first_id=data[0].id, last_id=data[-1].id)
        return oai.ModelList(data=[oai.ModelCard(id=n, created=self.started, root=self.cfg.model_name,
                                                 max_model_len=self.cfg.max_model_len) for n in self.names])

    # ---- shared steps -------------------------------------------------------------------------------------
    def tenant(self, request: Request) -> str:
        if self.cfg.api_keys is None:
            return ""
        tenant = self.cfg.api_keys.get(_key(request))
        if tenant is None:
            raise APIError(401, "missing or unknown API key (send 'Authorization: Bearer KEY' or 'x-api-key: KEY')",
                           code="invalid_api_key")
        return tenant

    def admin(self, request: Request) -> None:
        """May this client read /metrics and the API's schema? (APIError if not.)"""
        if self.cfg.metrics_key is not None:
            if not secrets.compare_digest(_key(request).encode(), self.cfg.metrics_key.encode()):
                raise APIError(401, "this path needs the metrics key (--metrics-key-file)", code="invalid_api_key")
        elif self.cfg.api_keys is not None and not _loopback(request):
            raise APIError(403, "with API keys on, this path answers loopback clients only (or give the server "
                           "--metrics-key-file)", code="forbidden")

    def check_chars(self, param: str, *texts: Any) -> None:
        """Refuse a prompt too long to be worth tokenizing (tokenizing megabytes stalls every stream)."""
        n, limit = sum(text_chars(t) for t in texts), self.max_prompt_chars
        if n > limit:
            raise APIError(400, f"{param}: {n} characters, over this server's limit of {limit} (--max-prompt-chars)",
                           param=param, code="context_length_exceeded")

    def check_ids(self, param: str, ids: list[int]) -> None:
        """Token ids a client sent: each must name a row of the model's vocabulary."""
        vocab = self.cfg.vocab_size
        if not all(0 <= t < vocab for t in ids):
            raise APIError(400, f"{param}: token ids must be in [0, {vocab})", param=param)

    def check_model(self, model: str) -> None:
        if model not in self.names:
            raise APIError(404, f"model {model!r} does not exist: this server serves "
                           f"{', '.join(map(repr, self.names))}", param="model", code="model_not_found")

    async def render(self, messages: Messages, tools: Tools, *, param: str = "messages", **template: Any) -> list[int]:
        """The chat as prompt token ids; `param` is the request field errors name (the Responses API's `input`)."""
        if self.tokenizer is None:
            raise APIError(400, "the model folder has no tokenizer.json: use /v1/completions with token ids")
        self.check_chars(param, messages, tools)
        from jinja2.exceptions import TemplateError

        try:  # templates with long tool schemas and long prompts take ms: keep the event loop free
            return await asyncio.to_thread(self.tokenizer.encode_chat, messages, tools=tools, **template)
        except (TemplateError, ValueError) as e:
            raise APIError(400, f"{param}: the chat template refused them: {e}", param=param) from None

    def literal(self, text: str) -> str:
        """A piece of a tool-call grammar (only forced calls ask: a tokenizer llguidance cannot read is a 400)."""
        try:
            return self.engine.llm.grammars.literal(text)
        except ValueError as e:
            raise APIError(400, f"tool_choice: {e}", param="tool_choice") from None

    async def constrain(self, spec: StructuredOutputsParams | None, param: str) -> StructuredOutputsParams | None:
        """The spec compiled (cached for the engine) off the event loop; what the grammar engine refuses is a 400."""
        if spec is None:
            return None
        try:
            await asyncio.to_thread(self.engine.llm.grammars.compile, spec)
        except ValueError as e:
            raise APIError(400, f"{param}: {e}", param=param) from None
        return spec

    def prepare(self, request: Request, tenant: str, body: Any, prompt: list[int], max_tokens: int | None,
                stop: tuple[str, ...], tools: bool, session: str | None,
                structured: StructuredOutputsParams | None = None) -> Prepared:
        limit = self.cfg.max_model_len
        if len(prompt) >= limit or (max_tokens is not None and len(prompt) + max_tokens > limit):
            raise APIError(400, f"this model's maximum context length is {limit} tokens; the prompt has "
                           f"{len(prompt)} tokens" + (f" and max_tokens asks for {max_tokens} more" if max_tokens else ""),
                           param=_PROMPT_FIELD.get(type(body), "messages"),
                           code="context_length_exceeded")
        try:
            params = SamplingParams(max_tokens=max_tokens or limit - len(prompt),
                                    temperature=0.0 if body.temperature < GREEDY_BELOW else body.temperature,
                                    top_p=body.top_p, top_k=body.top_k, seed=getattr(body, "seed", None),
                                    stop=stop, ignore_eos=getattr(body, "ignore_eos", False),
                                    structured_outputs=structured)
        except ValueError as e:
            raise APIError(400, str(e)) from None
        session = request.headers.get("x-session-id") or session
        return Prepared(prompt, params, tenant, body.cache_salt or "", f"{tenant}/{session}" if session else None,
                        tools, body.model)

    async def submit(self, request: Request, endpoint: str, arrival: float, p: Prepared, rid: str,
                     ) -> AsyncIterator[Any]:
        public = self.cfg.public.public_tokens(p.prompt) if self.cfg.public and not p.salt else 0
        classify = self._classifier() if p.tools else None
        return await self.jobs.submit(request, endpoint, arrival, p.prompt, p.params, request_id=rid,
                                      session=p.session,
                                      tenant=p.tenant, cache_salt=p.salt, classify_reply=classify,
                                      public_prefix_tokens=public)

    def _classifier(self) -> Callable[[str], str]:
        name = self.cfg.tool_parser
        return lambda text: "tool_calls" if parse_all(name, text).calls else "stop"

    def matched_stop(self, result: Result, stops: tuple[str, ...]) -> str | None:
        """The stop string that ended the reply, if one did (the engine cuts it from the text)."""
        if result.finish_reason != "stop" or not stops or self.tokenizer is None:
            return None
        full = self.tokenizer.decode(result.token_ids)
        hits = [(full.find(s), s) for s in stops if s and full.find(s) >= 0]
        return min(hits)[1] if hits else None

    # ---- OpenAI -------------------------------------------------------------------------------------------
    async def chat(self, body: oai.ChatCompletionRequest, request: Request, tenant: str) -> Response:
        arrival = time.monotonic()
        self.check_model(body.model)
        msgs, tools = openai_messages(body)
        prompt = await self.render(msgs, tools, **(body.chat_template_kwargs or {}))
        fmt = body.response_format
        forced = forced_call(self.cfg.tool_parser, tools, body.forced_tool, body.parallel_tool_calls, self.literal)
        spec = await self.constrain(forced, "tool_choice") or await self.constrain(
            json_reply(fmt.type, fmt.json_schema.schema_ if fmt.json_schema else None) if fmt else None,
            "response_format")
        p = self.prepare(request, tenant, body, prompt, body.max_new_tokens, body.stop_list, tools is not None, body.user,
                         spec)
        rid = f"chatcmpl-{secrets.token_hex(12)}"
        deltas = await self.submit(request, "chat", arrival, p, rid)
        if body.stream:
            return _sse_response(self._chat_events(deltas, rid, body, p), anthropic=False)
        result, thought, parsed = await self.collect(deltas, p.tools, self.cfg.reasoning_parser is not None)
        calls = [oai.ToolCall(id=f"call_{secrets.token_hex(12)}", function=oai.FunctionCall(name=c.name,
                              arguments=c.arguments)) for c in parsed.calls]
        message = oai.ResponseMessage(content=parsed.content if parsed.content or not calls else None,
                                      tool_calls=calls or None)
        out = oai.ChatCompletion(id=rid, created=int(time.time()), model=p.model, usage=_usage(result),
                                 choices=[oai.ChatChoice(message=message, finish_reason=_finish(result, calls))])
        d = out.model_dump()
        if self.cfg.reasoning_parser:
            d["choices"][0]["message"] |= _reasoning(thought or None)
        return JSONResponse(_with_ids(d, body, p.prompt, result.token_ids, prompt_on_choice=False))

    async def _chat_events(self, deltas: AsyncIterator[Any], rid: str, body: oai.ChatCompletionRequest,
                           p: Prepared) -> AsyncIterator[str]:
        created, model = int(time.time()), body.model
        parser = make_parser(self.cfg.tool_parser) if p.tools else None
        splitter = ThinkingSplitter() if self.cfg.reasoning_parser else None
        result, n_calls, pending = Result(), 0, []  # pending: token ids no chunk has carried yet

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
            if body.return_token_ids:
                _with_ids(obj, body, p.prompt if "role" in delta else None, pending[:], prompt_on_choice=False)
                pending.clear()
            return _sse(obj)

        yield chunk({"role": "assistant", "content": ""})
        async for d in deltas:
            result.add(d)
            pending += d.token_ids
            thought, answer = splitter.feed(d.text, d.finished) if splitter else ("", d.text)
            if thought:
                yield chunk(_reasoning(thought))
            piece = feed(parser, answer, d.finished)
            if piece.content:
                yield chunk({"content": piece.content})
            for c in piece.calls:
                n_calls += 1
                yield chunk({"tool_calls": [{"index": c.index, "id": f"call_{secrets.token_hex(12)}", "type": "function",
                                             "function": {"name": c.name, "arguments": c.arguments}}]})
        yield chunk({}, _finish(result, n_calls))
        if body.include_usage:
            yield _sse({"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": _usage(result).model_dump()})
        yield "data: [DONE]\n\n"

    async def completion(self, body: oai.CompletionRequest, request: Request, tenant: str) -> Response:
        arrival = time.monotonic()
        self.check_model(body.model)
        prompt = body.prompt if isinstance(body.prompt, list) else await self._encode(body.prompt)
        if isinstance(body.prompt, list):
            self.check_ids("prompt", prompt)
        p = self.prepare(request, tenant, body, prompt, body.max_tokens, body.stop_list, False, body.user)
        rid = f"cmpl-{secrets.token_hex(12)}"
        deltas = await self.submit(request, "completions", arrival, p, rid)
        if body.stream:
            return _sse_response(self._completion_events(deltas, rid, body, p.prompt), anthropic=False)
        result, _, _ = await self.collect(deltas, False, False)
        out = oai.Completion(id=rid, created=int(time.time()), model=p.model, usage=_usage(result),
                             choices=[oai.CompletionChoice(text=result.text, finish_reason=result.finish_reason)])
        return JSONResponse(_with_ids(out.model_dump(), body, p.prompt, result.token_ids, prompt_on_choice=True))

    async def _encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if self.tokenizer is None:
            raise APIError(400, "the model folder has no tokenizer.json: send the prompt as token ids", param="prompt")
        self.check_chars("prompt", text)
        return await asyncio.to_thread(self.tokenizer.encode, text, add_special_tokens)

    # ---- vLLM's tokenizer endpoints -----------------------------------------------------------------------
    async def tokenize(self, body: oai.TokenizeRequest) -> dict[str, Any]:
        if body.model is not None:
            self.check_model(body.model)
        if body.messages is not None:
            msgs, tools = openai_messages(body)
            ids = await self.render(msgs, tools, add_generation_prompt=body.add_generation_prompt,
                                    add_special_tokens=bool(body.add_special_tokens), **(body.chat_template_kwargs or {}))
        else:
            ids = await self._encode(body.prompt or "", body.add_special_tokens is not False)
        strs = [self.tokenizer.token_str(i) or "" for i in ids] if body.return_token_strs else None
        return {"count": len(ids), "max_model_len": self.cfg.max_model_len, "tokens": ids, "token_strs": strs}

    def detokenize(self, body: oai.DetokenizeRequest) -> dict[str, str]:
        if body.model is not None:
            self.check_model(body.model)
        if self.tokenizer is None:
            raise APIError(400, "the model folder has no tokenizer.json: nothing to detokenize with")
        self.check_ids("tokens", body.tokens)
        return {"prompt": self.tokenizer.decode(body.tokens)}

    async def _completion_events(self, deltas: AsyncIterator[Any], rid: str, body: oai.CompletionRequest,
                                 prompt: list[int]) -> AsyncIterator[str]:
        created, model, result = int(time.time()), body.model, Result()
        first = True
        async for d in deltas:
            result.add(d)
            if d.text or d.finished or (body.return_token_ids and d.token_ids):  # a token may decode to no text
                obj = {"id": rid, "object": "text_completion", "created": created, "model": model,
                       "choices": [{"index": 0, "text": d.text, "logprobs": None,
                                    "finish_reason": result.finish_reason or None}]}
                yield _sse(_with_ids(obj, body, prompt if first else None, d.token_ids, prompt_on_choice=True))
                first = False
        if body.include_usage:
            yield _sse({"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [],
                        "usage": _usage(result).model_dump()})
        yield "data: [DONE]\n\n"

    # ---- Anthropic ----------------------------------------------------------------------------------------
    async def messages(self, body: anth.MessagesRequest, request: Request, tenant: str) -> Response:
        arrival = time.monotonic()
        self.check_model(body.model)
        msgs, tools = anthropic_messages(body)
        template = self._thinking(body.thinking)
        think = template.get("enable_thinking", False)
        prompt = await self.render(msgs, tools, **template)
        stops = tuple(body.stop_sequences or ())
        session = body.metadata.user_id if body.metadata else None
        choice = body.tool_choice or anth.ToolChoice(type="auto")
        spec = await self.constrain(forced_call(self.cfg.tool_parser, tools, choice.forced,
                                                not choice.disable_parallel_tool_use, self.literal), "tool_choice")
        p = self.prepare(request, tenant, body, prompt, body.max_tokens, stops, tools is not None, session, spec)
        rid = f"msg_{secrets.token_hex(12)}"
        deltas = await self.submit(request, "messages", arrival, p, rid)
        if body.stream:
            return _sse_response(self._message_events(deltas, rid, stops, p, think), anthropic=True)
        result, thought, parsed = await self.collect(deltas, p.tools, think)
        content: list[dict[str, Any]] = [_thinking_block(thought)] if thought else []
        content += [{"type": "text", "text": parsed.content}] if parsed.content else []
        content += [_tool_use(c) for c in parsed.calls]
        stop = self.matched_stop(result, stops)
        out = anth.MessagesResponse(id=rid, model=p.model, content=content,
                                    stop_reason=_stop_reason(result, bool(parsed.calls), stop), stop_sequence=stop,
                                    usage=self._anthropic_usage(result))
        return JSONResponse(out.model_dump())

    def _thinking(self, thinking: anth.Thinking | None) -> dict[str, bool]:
        """`thinking` as the chat template's `enable_thinking`, or a 400 when the template has no thinking mode."""
        if thinking is None:
            return {}
        if self.tokenizer is None or "enable_thinking" not in (self.tokenizer.chat_template or ""):
            if thinking.type == "disabled":
                return {}
            raise APIError(400, f"thinking: {thinking.type!r} is not available: this model's chat template has no "
                           "thinking mode (no 'enable_thinking'); leave 'thinking' out or set it to disabled",
                           param="thinking")
        return {"enable_thinking": thinking.type != "disabled"}

    async def _message_events(self, deltas: AsyncIterator[Any], rid: str, stops: tuple[str, ...], p: Prepared,
                              think: bool) -> AsyncIterator[str]:
        parser = make_parser(self.cfg.tool_parser) if p.tools else None
        splitter = ThinkingSplitter() if think else None
        result, index, text_open, think_open, n_calls = Result(), 0, False, False, 0
        async for d in deltas:
            started = bool(result.prompt_tokens)
            result.add(d)
            if not started:  # the prompt's cache accounting is known once it is admitted
                usage = self._anthropic_usage(result).model_dump() | {"output_tokens": 0}
                yield _event("message_start", {"type": "message_start", "message": {
                    "id": rid, "type": "message", "role": "assistant", "model": p.model, "content": [],
                    "stop_reason": None, "stop_sequence": None, "usage": usage}})
            thought, answer = splitter.feed(d.text, d.finished) if splitter else ("", d.text)
            if thought and not think_open:
                yield _event("content_block_start", {"type": "content_block_start", "index": index,
                                                     "content_block": _thinking_block("")})
                think_open = True
            if thought:
                yield _event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                     "delta": {"type": "thinking_delta", "thinking": thought}})
            if think_open and (answer or d.finished):
                yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
                index, think_open = index + 1, False
            piece = feed(parser, answer, d.finished)
            if piece.content:
                if not text_open:
                    yield _event("content_block_start", {"type": "content_block_start", "index": index,
                                                         "content_block": {"type": "text", "text": ""}})
                    text_open = True
                yield _event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                     "delta": {"type": "text_delta", "text": piece.content}})
            for c in piece.calls:
                if text_open:
                    yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
                    index, text_open = index + 1, False
                block = _tool_use(c) | {"input": {}}
                yield _event("content_block_start", {"type": "content_block_start", "index": index,
                                                     "content_block": block})
                yield _event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                    "type": "input_json_delta", "partial_json": c.arguments}})
                yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
                index, n_calls = index + 1, n_calls + 1
        if text_open:
            yield _event("content_block_stop", {"type": "content_block_stop", "index": index})
        stop = self.matched_stop(result, stops)
        yield _event("message_delta", {"type": "message_delta", "delta": {
            "stop_reason": _stop_reason(result, n_calls > 0, stop), "stop_sequence": stop},
            "usage": {"output_tokens": result.output_tokens}})
        yield _event("message_stop", {"type": "message_stop"})

    def _anthropic_usage(self, r: Result) -> anth.AnthropicUsage:
        """Anthropic's three-way split: read from cache, written to it (the new full blocks), neither."""
        block = self.cfg.block_size
        created = max(0, r.prompt_tokens // block * block - r.cached_tokens)
        return anth.AnthropicUsage(input_tokens=r.prompt_tokens - r.cached_tokens - created,
                                   output_tokens=r.output_tokens, cache_read_input_tokens=r.cached_tokens,
                                   cache_creation_input_tokens=created, cached_tokens_per_tier=r.cached_tokens_per_tier)

    # ---- plumbing -----------------------------------------------------------------------------------------
    async def collect(self, deltas: AsyncIterator[Any], tools: bool, think: bool) -> tuple[Result, str, Parsed]:
        """A whole reply: its Result, its thinking (split off when `think`) and the rest, tool calls parsed."""
        result = Result()
        async for d in deltas:
            result.add(d)
        if result.finish_reason == "abort":
            raise APIError(503, "the request was aborted (server shutting down)", code="aborted")
        thought, answer = split_thinking(result.text) if think else ("", result.text)
        return result, thought, parse_all(self.cfg.tool_parser, answer) if tools else Parsed(answer)



def _loopback(request: Request) -> bool:
    try:
        return request.client is not None and ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


_PROMPT_FIELD = {oai.CompletionRequest: "prompt", ResponsesRequest: "input"}  # the field a too-long prompt came in


def _key(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")


def _sse_response(events: AsyncIterator[str], anthropic: bool) -> StreamingResponse:
    return StreamingResponse(_in_band_errors(events, anthropic), media_type="text/event-stream", headers=SSE_HEADERS)


async def _in_band_errors(events: AsyncIterator[str], anthropic: bool) -> AsyncIterator[str]:
    """A stream that fails after its headers went out can only say so in-band, then stop."""
    try:
        async for e in events:
            yield e
    except Exception as e:
        log.exception("stream failed")
        if anthropic:
            yield _event("error", {"type": "error", "error": {"type": "api_error", "message": str(e)}})
        else:
            yield _sse({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})


def _finish(result: Result, calls: Any) -> str:
    return "tool_calls" if calls and result.finish_reason == "stop" else result.finish_reason


def _stop_reason(result: Result, calls: bool, stop: str | None) -> str:
    if result.finish_reason == "length":
        return "max_tokens"
    return "tool_use" if calls else "stop_sequence" if stop else "end_turn"


def _usage(r: Result) -> oai.Usage:
    return oai.Usage(prompt_tokens=r.prompt_tokens, completion_tokens=r.output_tokens,
                     total_tokens=r.prompt_tokens + r.output_tokens,
                     prompt_tokens_details=oai.PromptTokensDetails(cached_tokens=r.cached_tokens,
                                                                   cached_tokens_per_tier=r.cached_tokens_per_tier))


def _with_ids(obj: dict[str, Any], body: oai.Sampling, prompt: list[int] | None, reply: list[int], *,
              prompt_on_choice: bool) -> dict[str, Any]:
    """vLLM's `return_token_ids`, where asked: the reply's ids on the choice, the prompt's on the choice
    (completions) or the response (chat); a stream sends the prompt's with its first chunk only."""
    if body.return_token_ids:
        choice = obj["choices"][0]
        if prompt is not None:
            (choice if prompt_on_choice else obj)["prompt_token_ids"] = list(prompt)
        choice["token_ids"] = list(reply)
    return obj


def _reasoning(text: str | None) -> dict[str, Any]:
    """vLLM's reasoning fields: `reasoning`, and `reasoning_content`, its older name, which clients still read."""
    return {"reasoning": text, "reasoning_content": text}


def _thinking_block(text: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": text, "signature": ""}  # unsigned: an open model's own thoughts


def _tool_use(c: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{secrets.token_hex(12)}", "name": c.name, "input": json.loads(c.arguments)}


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _event(name: str, obj: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {json.dumps(obj, ensure_ascii=False)}\n\n"
