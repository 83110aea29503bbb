"""The OpenAI Responses API (`POST /v1/responses`, `GET /v1/responses/{id}`): what Codex CLI and the OpenAI
Agents SDK speak.

A request's `input` (text, or items: messages, `function_call`s and their `function_call_output`s) becomes a
chat conversation for the model's template, after the conversation of `previous_response_id` when given.
Responses are kept (unless `store` is false) per tenant, within its budgets (`response_store.py`),
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
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from agentkv.server import sse
from agentkv.server.chat import Messages, Tools, parse_arguments
from agentkv.server.errors import APIError
from agentkv.server.jobs import Result
from agentkv.server.pipeline import Ask, Context, Job, Pipeline, session_of
from agentkv.server.reply import Call, Reply, Text, Thought, ThoughtDone, whole
from agentkv.server.response_store import ResponseStore
from agentkv.server.responses_protocol import (
    ContentPart,
    FunctionCallItem,
    Item,
    MessageItem,
    ReasoningItem,
    ResponsesRequest,
    TextFormat,
    ToolDef,
)
from agentkv.server.thinking import CLOSE, OPEN
from agentkv.server.tool_parsers import Parsed


def to_request(body: ResponsesRequest, headers: Mapping[str, str], ctx: Context, history: Messages = ()) -> Ask:
    """`history`: the conversation of `previous_response_id` (the server's store keeps it; the gateway has none)."""
    tools, _ = _tools(body.tools) if body.tool_choice != "none" else (None, {})
    system = [{"role": "system", "content": body.instructions}] if body.instructions else []  # never inherited
    fmt = body.text.format if body.text else TextFormat()
    return Ask("responses", body.model, messages=system + list(history) + _messages(body.input), tools=tools,
               max_tokens=body.max_output_tokens, session=session_of(headers, body.prompt_cache_key or body.user),
               salt=body.cache_salt or "", temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
               forced_tool=body.forced_tool, parallel_tool_calls=body.parallel_tool_calls,
               json_format=(fmt.type, fmt.schema_), format_param="text.format",
               think=ctx.reasoning_parser is not None, param="input")


class Responses:
    """The endpoint, and the responses it keeps for `previous_response_id` and `GET /v1/responses/{id}`."""

    def __init__(self, pipe: Pipeline, kept: ResponseStore | None = None) -> None:
        self.pipe, self.kept = pipe, kept or ResponseStore()

    # ---- the endpoint ---------------------------------------------------------------------------------------
    async def handle(self, body: ResponsesRequest, request: Request, tenant: str) -> Response:
        def ask(b: ResponsesRequest, headers: Mapping[str, str], ctx: Context) -> Ask:
            return to_request(b, headers, ctx, self._previous(b.previous_response_id, tenant))

        job = await self.pipe.start(ask, body, request, tenant)
        reply = self.pipe.reply(job)
        namespaces = _tools(body.tools)[1] if job.ask.tools else {}
        shell = self._shell(job.rid, body)
        if body.stream:
            return sse.response(self._stream(job, reply, shell, body, tenant, namespaces), anthropic=False)
        w = await whole(reply, job.deltas)
        items = ([_reasoning(w.thought)] if w.thought else []) + _items(Parsed(w.content, w.calls), namespaces)
        return JSONResponse(self._finish(shell, body, w.result, items, job, tenant))

    def get(self, response_id: str, tenant: str) -> dict[str, Any]:
        s = self.kept.get(tenant, response_id)
        if s is None:
            raise APIError(404, f"response {response_id!r} not found (never stored, or older than "
                           f"{self.kept.retention_s:g} s)", param="response_id", code="response_not_found")
        return s.body

    # ---- conversation -----------------------------------------------------------------------------------------
    def _previous(self, response_id: str | None, tenant: str) -> Messages:
        if response_id is None:
            return []
        s = self.kept.get(tenant, response_id)
        if s is None:
            raise APIError(400, f"previous_response_id: response {response_id!r} not found (not stored, or older "
                           f"than the {self.kept.retention_s:g} s retention window)", param="previous_response_id",
                           code="previous_response_not_found")
        return list(s.messages)

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
                job: Job, tenant: str) -> dict[str, Any]:
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
            conversation = (job.ask.messages or [])[1 if body.instructions else 0 :]  # the instructions: not kept
            self.kept.put(tenant, shell["id"], [*conversation, _reply(items)], out)
        return out

    def _reasoning_tokens(self, items: list[dict[str, Any]], result: Result) -> int:
        """The reply's thinking as the tokenizer counts it, its tags included (the engine does not mark where the
        thinking ended)."""
        text = _thought(items)
        if not text:
            return 0
        return min(result.output_tokens, len(self.pipe.tokenizer.encode(f"{OPEN}{text}{CLOSE}", False)))

    async def _stream(self, job: Job, reply: Reply, shell: dict[str, Any], body: ResponsesRequest, tenant: str,
                      namespaces: dict[str, str]) -> AsyncIterator[str]:
        out = _Stream(namespaces)
        yield out.say("response.created", response=shell)
        yield out.say("response.in_progress", response=shell)
        async for d in job.deltas:
            for e in reply.feed(d):
                for frame in out.on(e):
                    yield frame
        for frame in out.close_text():
            yield frame
        done = self._finish(shell, body, reply.result, out.items, job, tenant)
        yield out.say("response.completed" if done["status"] == "completed" else "response.incomplete", response=done)


class _Stream:
    """The Responses API's typed events for one reply: output items opened, filled and closed as the reply's
    events come."""

    def __init__(self, namespaces: dict[str, str]) -> None:
        self.namespaces, self.items, self.seq = namespaces, [], 0
        self.text: dict[str, Any] | None = None  # the open message item, while text streams
        self.thinking: dict[str, Any] | None = None  # the open reasoning item, while the thinking streams

    def say(self, kind: str, **data: Any) -> str:
        self.seq += 1
        return sse.event(kind, {"type": kind, "sequence_number": self.seq - 1, **data})

    def _add(self, item: dict[str, Any]) -> int:
        self.items.append(item)
        return len(self.items) - 1

    def on(self, e: Any) -> list[str]:
        if isinstance(e, Thought):
            return self._thought(e.text)
        if isinstance(e, ThoughtDone) and self.thinking is not None:
            item, self.thinking = self.thinking, None
            item["status"] = "completed"
            i = self.items.index(item)
            return [self.say("response.reasoning_text.done", item_id=item["id"], output_index=i, content_index=0,
                             text=item["content"][0]["text"]), self.say("response.output_item.done", output_index=i,
                                                                        item=item)]
        if isinstance(e, Text):
            return self._text(e.text)
        if isinstance(e, Call):
            return self._call(e)
        return []

    def _thought(self, text: str) -> list[str]:
        frames = []
        if self.thinking is None:
            self.thinking = _reasoning("") | {"status": "in_progress"}
            frames.append(self.say("response.output_item.added", output_index=self._add(self.thinking),
                                   item=self.thinking))
        self.thinking["content"][0]["text"] += text
        return [*frames, self.say("response.reasoning_text.delta", item_id=self.thinking["id"],
                                  output_index=self.items.index(self.thinking), content_index=0, delta=text)]

    def _text(self, text: str) -> list[str]:
        frames = []
        if self.text is None:
            self.text = _message("") | {"status": "in_progress"}
            i = self._add(self.text)
            frames += [self.say("response.output_item.added", output_index=i, item=self.text),
                       self.say("response.content_part.added", item_id=self.text["id"], output_index=i,
                                content_index=0, part=_part(""))]
        self.text["content"][0]["text"] += text
        return [*frames, self.say("response.output_text.delta", item_id=self.text["id"],
                                  output_index=self.items.index(self.text), content_index=0, delta=text, logprobs=[])]

    def _call(self, e: Call) -> list[str]:
        frames = []
        for item in _items(Parsed(calls=[e.call]), self.namespaces):
            i = self._add(item)
            frames += [self.say("response.output_item.added", output_index=i, item={**item, "arguments": ""}),
                       self.say("response.function_call_arguments.delta", item_id=item["id"], output_index=i,
                                delta=item["arguments"]),
                       self.say("response.function_call_arguments.done", item_id=item["id"], output_index=i,
                                name=item["name"], arguments=item["arguments"]),
                       self.say("response.output_item.done", output_index=i, item=item)]
        return frames

    def close_text(self) -> list[str]:
        if self.text is None:
            return []
        self.text["status"] = "completed"
        i, part = self.items.index(self.text), self.text["content"][0]
        return [self.say("response.output_text.done", item_id=self.text["id"], output_index=i, content_index=0,
                         text=part["text"], logprobs=[]),
                self.say("response.content_part.done", item_id=self.text["id"], output_index=i, content_index=0,
                         part=part),
                self.say("response.output_item.done", output_index=i, item=self.text)]


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

