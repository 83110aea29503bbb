"""Anthropic `/v1/messages` (and `/v1/messages/count_tokens`): its request as an `Ask` (`thinking` as the
template's `enable_thinking`), its reply as content blocks (thinking, text, tool_use), whole or as
Anthropic's stream of typed events, with the three-way cache usage split."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from agentkv.server import anthropic_protocol as anth
from agentkv.server import sse
from agentkv.server.chat import anthropic_messages
from agentkv.server.errors import APIError
from agentkv.server.jobs import Result
from agentkv.server.pipeline import Ask, Context, Job, Pipeline, session_of
from agentkv.server.reply import Call, Reply, Text, Thought, ThoughtDone, whole


def to_request(body: anth.MessagesRequest, headers: Mapping[str, str], ctx: Context) -> Ask:
    messages, tools = anthropic_messages(body)
    template = thinking_template(body.thinking, ctx.tokenizer)
    choice = body.tool_choice or anth.ToolChoice(type="auto")
    return Ask("messages", body.model, messages=messages, tools=tools, template=template, max_tokens=body.max_tokens,
               stop=tuple(body.stop_sequences or ()),
               session=session_of(headers, body.metadata.user_id if body.metadata else None),
               salt=body.cache_salt or "", temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
               forced_tool=choice.forced, parallel_tool_calls=not choice.disable_parallel_tool_use,
               think=template.get("enable_thinking", False))


def thinking_template(thinking: anth.Thinking | None, tokenizer: Any) -> dict[str, bool]:
    """`thinking` as the chat template's `enable_thinking`, or a 400 when the template has no thinking mode."""
    if thinking is None:
        return {}
    if tokenizer is None or "enable_thinking" not in (tokenizer.chat_template or ""):
        if thinking.type == "disabled":
            return {}
        raise APIError(400, f"thinking: {thinking.type!r} is not available: this model's chat template has no "
                       "thinking mode (no 'enable_thinking'); leave 'thinking' out or set it to disabled",
                       param="thinking")
    return {"enable_thinking": thinking.type != "disabled"}


async def handle(pipe: Pipeline, body: anth.MessagesRequest, request: Request, tenant: str) -> Response:
    job = await pipe.start(to_request, body, request, tenant)
    reply = pipe.reply(job)
    block = pipe.cfg.block_size
    if body.stream:
        return sse.response(_stream(job, reply, block), anthropic=True)
    w = await whole(reply, job.deltas)
    content: list[dict[str, Any]] = [_thinking_block(w.thought)] if w.thought else []
    content += [{"type": "text", "text": w.content}] if w.content else []
    content += [_tool_use(c) for c in w.calls]
    out = anth.MessagesResponse(id=job.rid, model=body.model, content=content, stop_reason=reply.stop_reason,
                                stop_sequence=reply.stop_string, usage=usage(w.result, block))
    return JSONResponse(out.model_dump())


async def _stream(job: Job, reply: Reply, block: int) -> AsyncIterator[str]:
    index, text_open, think_open = 0, False, False  # index: the open (or next) content block's

    def say(kind: str, **data: Any) -> str:
        return sse.event(kind, {"type": kind, **data})

    async for d in job.deltas:
        started = bool(reply.result.prompt_tokens)
        events = reply.feed(d)
        if not started:  # the prompt's cache accounting is known once it is admitted
            yield say("message_start", message={
                "id": job.rid, "type": "message", "role": "assistant", "model": job.ask.model, "content": [],
                "stop_reason": None, "stop_sequence": None,
                "usage": usage(reply.result, block).model_dump() | {"output_tokens": 0}})
        for e in events:
            if isinstance(e, Thought):
                if not think_open:
                    yield say("content_block_start", index=index, content_block=_thinking_block(""))
                    think_open = True
                yield say("content_block_delta", index=index, delta={"type": "thinking_delta", "thinking": e.text})
            elif isinstance(e, ThoughtDone):
                yield say("content_block_stop", index=index)
                index, think_open = index + 1, False
            elif isinstance(e, Text):
                if not text_open:
                    yield say("content_block_start", index=index, content_block={"type": "text", "text": ""})
                    text_open = True
                yield say("content_block_delta", index=index, delta={"type": "text_delta", "text": e.text})
            elif isinstance(e, Call):
                if text_open:
                    yield say("content_block_stop", index=index)
                    index, text_open = index + 1, False
                yield say("content_block_start", index=index, content_block=_tool_use(e.call) | {"input": {}})
                yield say("content_block_delta", index=index,
                          delta={"type": "input_json_delta", "partial_json": e.call.arguments})
                yield say("content_block_stop", index=index)
                index += 1
    if text_open:
        yield say("content_block_stop", index=index)
    yield say("message_delta", delta={"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_string},
              usage={"output_tokens": reply.result.output_tokens})
    yield say("message_stop")


def usage(r: Result, block: int) -> anth.AnthropicUsage:
    """Anthropic's three-way split: read from cache, written to it (the new full blocks), neither."""
    created = max(0, r.prompt_tokens // block * block - r.cached_tokens)
    return anth.AnthropicUsage(input_tokens=r.prompt_tokens - r.cached_tokens - created,
                               output_tokens=r.output_tokens, cache_read_input_tokens=r.cached_tokens,
                               cache_creation_input_tokens=created, cached_tokens_per_tier=r.cached_tokens_per_tier)


def _thinking_block(text: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": text, "signature": ""}  # unsigned: an open model's own thoughts


def _tool_use(c: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{secrets.token_hex(12)}", "name": c.name, "input": json.loads(c.arguments)}
