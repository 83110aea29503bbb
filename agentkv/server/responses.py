"""The OpenAI Responses API (`POST /v1/responses`, `GET /v1/responses/{id}`): what Codex CLI and the OpenAI
Agents SDK speak.

A request's `input` (text, or items: messages, `function_call`s and their `function_call_output`s) becomes a
chat conversation for the model's template, after the conversation of `previous_response_id` when given.
Responses are kept (unless `store` is false) per tenant for `retention_s` and at most `max_stored` of them,
so a chain of turns can send only what is new. The reply comes back as output items (a `message` with
`output_text`, `function_call`s), whole or as the API's stream of typed events. `prompt_cache_key` names the
session for the cache policy; usage reports `input_tokens_details.cached_tokens`.

Function tools, also inside a `namespace` (Codex groups tools so), are offered to the model; hosted tools
(web search, file search, computer use, ...) are refused with a 400 naming them: this server runs none.
With `--reasoning-parser`, a reply's `<think>...</think>` is a `reasoning` item (`reasoning_text`, streamed
as `response.reasoning_text.delta`), as open-weight reasoning models answer; a `reasoning` item sent back in
`input` (Codex does) reaches the template as the next assistant turn's `reasoning_content`.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from agentkv.server.chat import Messages, Tools, parse_arguments
from agentkv.server.errors import APIError
from agentkv.server.jobs import Result
from agentkv.server.structured import forced_call, json_reply
from agentkv.server.thinking import CLOSE, OPEN, ThinkingSplitter
from agentkv.server.tool_parsers import Parsed, feed, make_parser


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ContentPart(_Body):
    type: Literal["input_text", "output_text", "text", "summary_text", "reasoning_text", "refusal"]
    text: str = ""
    refusal: str = ""


class MessageItem(_Body):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]


class FunctionCallItem(_Body):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = "{}"


class FunctionCallOutputItem(_Body):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[ContentPart]


class ReasoningItem(_Body):
    type: Literal["reasoning"]
    content: list[ContentPart] | None = None  # the reasoning text (summaries are not the model's own words)


Item = FunctionCallItem | FunctionCallOutputItem | ReasoningItem | MessageItem


class ToolDef(_Body):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    tools: list[ToolDef] | None = None  # a namespace's


class FunctionChoice(_Body):
    type: Literal["function"]
    name: str


class TextFormat(_Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(_Body):
    format: TextFormat = Field(default_factory=TextFormat)


class ResponsesRequest(_Body):
    model: str
    input: str | list[Item] = Field(min_length=1)
    instructions: str | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # extension, as on the other endpoints
    stream: bool = False
    previous_response_id: str | None = None
    store: bool = True
    prompt_cache_key: str | None = Field(None, max_length=512)
    user: str | None = None
    metadata: dict[str, str] | None = None
    reasoning: dict[str, Any] | None = None  # echoed: the model's template decides whether it reasons
    cache_salt: str | None = Field(None, max_length=256)  # extension

    @property
    def forced_tool(self) -> str | None:
        """What `tool_choice` forces: None (the model decides), "*" (any tool) or a tool's name."""
        if isinstance(self.tool_choice, FunctionChoice):
            return self.tool_choice.name
        return "*" if self.tool_choice == "required" else None


@dataclass(slots=True)
class _Stored:
    tenant: str
    at: float
    messages: Messages  # the conversation, this response's reply included


class Responses:
    def __init__(self, server: Any, retention_s: float = 3600.0, max_stored: int = 10_000) -> None:
        self.server, self.retention_s, self.max_stored = server, retention_s, max_stored
        self._stored: OrderedDict[str, _Stored] = OrderedDict()
        self._bodies: dict[str, dict[str, Any]] = {}

    # ---- the endpoint ---------------------------------------------------------------------------------------
    async def create(self, body: ResponsesRequest, request: Request, tenant: str) -> Any:
        """A JSONResponse, or (streaming) the events as SSE strings for the app to send."""
        srv = self.server
        arrival = time.monotonic()
        srv.check_model(body.model)
        messages = self._previous(body.previous_response_id, tenant) + _messages(body.input)
        tools, namespaces = _tools(body.tools) if body.tool_choice != "none" else (None, {})
        system = [{"role": "system", "content": body.instructions}] if body.instructions else []  # never inherited
        prompt = await srv.render(system + messages, tools, param="input")
        fmt = body.text.format if body.text else TextFormat()
        spec = await srv.constrain(forced_call(srv.cfg.tool_parser, tools, body.forced_tool, body.parallel_tool_calls,
                                               srv.literal), "tool_choice") or \
            await srv.constrain(json_reply(fmt.type, fmt.schema_), "text.format")
        session = request.headers.get("x-session-id") or body.prompt_cache_key or body.user
        p = srv.prepare(request, tenant, body, prompt, body.max_output_tokens, (), tools is not None, session, spec)
        rid = f"resp_{secrets.token_hex(12)}"
        deltas = await srv.submit(request, "responses", arrival, p, rid)
        shell = self._shell(rid, body)
        if body.stream:
            return self._events(deltas, shell, body, messages, tenant, namespaces, p.tools)
        result, thought, parsed = await srv.collect(deltas, p.tools, srv.cfg.reasoning_parser is not None)
        items = ([_reasoning(thought)] if thought else []) + _items(parsed, namespaces)
        return JSONResponse(self._finish(shell, body, result, items, messages, tenant))

    def get(self, response_id: str, tenant: str) -> dict[str, Any]:
        self._expire()
        s = self._stored.get(response_id)
        if s is None or s.tenant != tenant:
            raise APIError(404, f"response {response_id!r} not found (never stored, or older than "
                           f"{self.retention_s:g} s)", param="response_id", code="response_not_found")
        return self._bodies[response_id]

    # ---- conversation -----------------------------------------------------------------------------------------
    def _previous(self, response_id: str | None, tenant: str) -> Messages:
        if response_id is None:
            return []
        self._expire()
        s = self._stored.get(response_id)
        if s is None or s.tenant != tenant:
            raise APIError(400, f"previous_response_id: response {response_id!r} not found (not stored, or older "
                           f"than the {self.retention_s:g} s retention window)", param="previous_response_id",
                           code="previous_response_not_found")
        return list(s.messages)

    def _store(self, rid: str, tenant: str, messages: Messages, out: dict[str, Any]) -> None:
        self._stored[rid] = _Stored(tenant, time.monotonic(), messages)
        self._bodies[rid] = out
        while len(self._stored) > self.max_stored:
            old, _ = self._stored.popitem(last=False)
            self._bodies.pop(old, None)

    def _expire(self) -> None:
        cutoff = time.monotonic() - self.retention_s
        while self._stored and next(iter(self._stored.values())).at < cutoff:
            old, _ = self._stored.popitem(last=False)
            self._bodies.pop(old, None)

    # ---- output -----------------------------------------------------------------------------------------------
    def _shell(self, rid: str, body: ResponsesRequest) -> dict[str, Any]:
        return {"id": rid, "object": "response", "created_at": int(time.time()), "status": "in_progress",
                "model": body.model, "output": [], "usage": None, "error": None, "incomplete_details": None,
                "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
                "parallel_tool_calls": body.parallel_tool_calls, "previous_response_id": body.previous_response_id,
                "temperature": body.temperature, "top_p": body.top_p, "store": body.store,
                "tool_choice": body.tool_choice if isinstance(body.tool_choice, str) else body.tool_choice.model_dump(),
                "tools": [t.model_dump(exclude_none=True) for t in body.tools or []],
                "text": {"format": (body.text.format if body.text else TextFormat()).model_dump(by_alias=True,
                                                                                                exclude_none=True)},
                "reasoning": body.reasoning, "metadata": body.metadata or {}, "truncation": "disabled",
                "user": body.user}

    def _finish(self, shell: dict[str, Any], body: ResponsesRequest, result: Result, items: list[dict[str, Any]],
                messages: Messages, tenant: str) -> dict[str, Any]:
        if result.finish_reason == "abort":
            raise APIError(503, "the request was aborted (server shutting down)", code="aborted")
        cut = result.finish_reason == "length"
        out = {**shell, "status": "incomplete" if cut else "completed", "output": items,
               "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
               "usage": {"input_tokens": result.prompt_tokens, "output_tokens": result.output_tokens,
                         "total_tokens": result.prompt_tokens + result.output_tokens,
                         "input_tokens_details": {"cached_tokens": result.cached_tokens,
                                                  "cached_tokens_per_tier": result.cached_tokens_per_tier},
                         "output_tokens_details": {"reasoning_tokens": self._reasoning_tokens(items, result)}}}
        if body.store:
            self._store(shell["id"], tenant, [*messages, _reply(items)], out)
        return out

    def _reasoning_tokens(self, items: list[dict[str, Any]], result: Result) -> int:
        """The reply's thinking as the tokenizer counts it, its tags included (the engine does not mark where the
        thinking ended)."""
        text = _thought(items)
        if not text:
            return 0
        return min(result.output_tokens, len(self.server.tokenizer.encode(f"{OPEN}{text}{CLOSE}", False)))

    async def _events(self, deltas: AsyncIterator[Any], shell: dict[str, Any], body: ResponsesRequest,
                      messages: Messages, tenant: str, namespaces: dict[str, str], tools: bool) -> AsyncIterator[str]:
        seq = iter(range(1 << 62))

        def event(kind: str, **data: Any) -> str:
            return (f"event: {kind}\ndata: "
                    f"{json.dumps({'type': kind, 'sequence_number': next(seq), **data}, ensure_ascii=False)}\n\n")

        yield event("response.created", response=shell)
        yield event("response.in_progress", response=shell)
        parser = make_parser(self.server.cfg.tool_parser) if tools else None
        splitter = ThinkingSplitter() if self.server.cfg.reasoning_parser else None
        result, items, text = Result(), [], None  # text: the open message item, while text streams
        thinking = None  # the open reasoning item, while the thinking streams
        async for d in deltas:
            result.add(d)
            thought, answer = splitter.feed(d.text, d.finished) if splitter else ("", d.text)
            if thought:
                if thinking is None:
                    thinking = _reasoning("")
                    thinking["status"] = "in_progress"
                    items.append(thinking)
                    yield event("response.output_item.added", output_index=len(items) - 1, item=thinking)
                thinking["content"][0]["text"] += thought
                yield event("response.reasoning_text.delta", item_id=thinking["id"], output_index=items.index(thinking),
                            content_index=0, delta=thought)
            if thinking is not None and thinking["status"] == "in_progress" and (answer or d.finished):
                thinking["status"] = "completed"
                i = items.index(thinking)
                yield event("response.reasoning_text.done", item_id=thinking["id"], output_index=i, content_index=0,
                            text=thinking["content"][0]["text"])
                yield event("response.output_item.done", output_index=i, item=thinking)
            piece = feed(parser, answer, d.finished)
            if piece.content:
                if text is None:
                    text = _message("")
                    text["status"] = "in_progress"
                    items.append(text)
                    yield event("response.output_item.added", output_index=len(items) - 1, item=text)
                    yield event("response.content_part.added", item_id=text["id"], output_index=len(items) - 1,
                                content_index=0, part=_part(""))
                text["content"][0]["text"] += piece.content
                yield event("response.output_text.delta", item_id=text["id"], output_index=items.index(text),
                            content_index=0, delta=piece.content, logprobs=[])
            for item in _items(Parsed(calls=piece.calls), namespaces):
                items.append(item)
                i = len(items) - 1
                yield event("response.output_item.added", output_index=i, item={**item, "arguments": ""})
                yield event("response.function_call_arguments.delta", item_id=item["id"], output_index=i,
                            delta=item["arguments"])
                yield event("response.function_call_arguments.done", item_id=item["id"], output_index=i,
                            name=item["name"], arguments=item["arguments"])
                yield event("response.output_item.done", output_index=i, item=item)
        if text is not None:
            text["status"] = "completed"
            i, part = items.index(text), text["content"][0]
            yield event("response.output_text.done", item_id=text["id"], output_index=i, content_index=0,
                        text=part["text"], logprobs=[])
            yield event("response.content_part.done", item_id=text["id"], output_index=i, content_index=0, part=part)
            yield event("response.output_item.done", output_index=i, item=text)
        out = self._finish(shell, body, result, items, messages, tenant)
        yield event("response.completed" if out["status"] == "completed" else "response.incomplete", response=out)


def _messages(given: str | list[Item]) -> Messages:
    """`input` as chat messages (the HF convention `chat.py` uses for the other APIs)."""
    out: Messages = []
    items = [MessageItem(role="user", content=given)] if isinstance(given, str) else given
    thought = ""  # a reasoning item's text, for the assistant turn it preceded
    for i, item in enumerate(items):
        if isinstance(item, ReasoningItem):
            thought += _text(item.content or [])
            continue
        if isinstance(item, MessageItem):
            role = "system" if item.role == "developer" else item.role
            out.append({"role": role, "content": _text(item.content)})
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function",
                    "function": {"name": item.name, "arguments": parse_arguments(item.arguments,
                                                                                 f"input.{i}.arguments")}}
            if out and out[-1]["role"] == "assistant" and "tool_calls" in out[-1]:
                out[-1]["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
        else:
            out.append({"role": "tool", "tool_call_id": item.call_id, "content": _text(item.output)})
        if thought and out[-1]["role"] == "assistant":
            out[-1].setdefault("reasoning_content", thought)
            thought = ""
    return out


def _tools(defs: list[ToolDef] | None) -> tuple[Tools, dict[str, str]]:
    """Function tools in the chat templates' shape, namespaces flattened (name -> namespace, to answer calls
    in kind); hosted tools refused."""
    tools: list[dict[str, Any]] = []
    namespaces: dict[str, str] = {}
    for i, t in enumerate(defs or []):
        inner = [(t.name, f) for f in t.tools or []] if t.type == "namespace" else [(None, t)]
        for ns, f in inner:
            if f.type != "function" or not f.name:
                raise APIError(400, f"tools.{i}: type {f.type!r} is a hosted tool, which this server does not run "
                               "(only function tools)", param=f"tools.{i}.type")
            tools.append({"type": "function", "function": {
                "name": f.name, "description": f.description or "",
                "parameters": f.parameters or {"type": "object", "properties": {}}}})
            if ns:
                namespaces[f.name] = ns
    return tools or None, namespaces


def _items(parsed: Parsed, namespaces: dict[str, str]) -> list[dict[str, Any]]:
    items = [_message(parsed.content)] if parsed.content else []
    for c in parsed.calls:
        item = {"type": "function_call", "id": f"fc_{secrets.token_hex(12)}", "call_id": f"call_{secrets.token_hex(12)}",
                "name": c.name, "arguments": c.arguments, "status": "completed"}
        if c.name in namespaces:
            item["namespace"] = namespaces[c.name]
        items.append(item)
    return items


def _reasoning(text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": f"rs_{secrets.token_hex(12)}", "status": "completed", "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def _thought(items: list[dict[str, Any]]) -> str:
    return "".join(p["text"] for it in items if it["type"] == "reasoning" for p in it["content"])


def _message(text: str) -> dict[str, Any]:
    return {"type": "message", "id": f"msg_{secrets.token_hex(12)}", "status": "completed", "role": "assistant",
            "content": [_part(text)]}


def _part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reply(items: list[dict[str, Any]]) -> dict[str, Any]:
    """The reply as the assistant message of the stored conversation."""
    text = "".join(p["text"] for it in items if it["type"] == "message" for p in it["content"])
    calls = [{"id": it["call_id"], "type": "function", "function": {"name": it["name"],
                                                                    "arguments": json.loads(it["arguments"])}}
             for it in items if it["type"] == "function_call"]
    thought = _thought(items)
    return {"role": "assistant", "content": text, **({"tool_calls": calls} if calls else {}),
            **({"reasoning_content": thought} if thought else {})}


def _text(content: str | list[ContentPart]) -> str:
    return content if isinstance(content, str) else "".join(p.text or p.refusal for p in content)

