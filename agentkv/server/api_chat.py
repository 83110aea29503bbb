"""OpenAI `/v1/chat/completions`: its request as an `Ask`, its reply as a `chat.completion` or a stream of
`chat.completion.chunk`s. With `--reasoning-parser`, the reply's thinking is the message's `reasoning`."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from agentkv.server import openai_protocol as oai
from agentkv.server import sse
from agentkv.server.chat import openai_messages
from agentkv.server.openai_common import sampling, usage, with_ids
from agentkv.server.pipeline import Ask, Context, Job, Pipeline, session_of
from agentkv.server.reply import Call, Reply, Text, Thought, whole


def to_request(body: oai.ChatCompletionRequest, headers: Mapping[str, str], ctx: Context) -> Ask:
    messages, tools = openai_messages(body)
    fmt = body.response_format
    return Ask("chat", messages=messages, tools=tools, template=dict(body.chat_template_kwargs or {}),
               max_tokens=body.max_new_tokens, session=session_of(headers, body.user),
               forced_tool=body.forced_tool, parallel_tool_calls=body.parallel_tool_calls,
               json_format=(fmt.type, fmt.json_schema.schema_ if fmt.json_schema else None) if fmt else None,
               think=ctx.reasoning_parser is not None, **sampling(body))


async def handle(pipe: Pipeline, body: oai.ChatCompletionRequest, request: Request, tenant: str) -> Response:
    job = await pipe.start(to_request, body, request, tenant)
    reply = pipe.reply(job)
    if body.stream:
        return sse.response(_stream(job, reply, body), anthropic=False)
    w = await whole(reply, job.deltas)
    calls = [oai.ToolCall(id=f"call_{secrets.token_hex(12)}", function=oai.FunctionCall(name=c.name,
                          arguments=c.arguments)) for c in w.calls]
    message = oai.ResponseMessage(content=w.content if w.content or not calls else None, tool_calls=calls or None)
    out = oai.ChatCompletion(id=job.rid, created=int(time.time()), model=body.model, usage=usage(w.result),
                             choices=[oai.ChatChoice(message=message, finish_reason=reply.finish_reason)])
    d = out.model_dump()
    if job.ask.think:
        d["choices"][0]["message"] |= _reasoning(w.thought or None)
    return JSONResponse(with_ids(d, body, job.prompt, w.result.token_ids, prompt_on_choice=False))


async def _stream(job: Job, reply: Reply, body: oai.ChatCompletionRequest) -> AsyncIterator[str]:
    created, pending = int(time.time()), []  # pending: token ids no chunk has carried yet

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        obj = {"id": job.rid, "object": "chat.completion.chunk", "created": created, "model": body.model,
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        if body.return_token_ids:
            with_ids(obj, body, job.prompt if "role" in delta else None, pending[:], prompt_on_choice=False)
            pending.clear()
        return sse.data(obj)

    yield chunk({"role": "assistant", "content": ""})
    async for d in job.deltas:
        pending += d.token_ids
        for e in reply.feed(d):
            if isinstance(e, Thought):
                yield chunk(_reasoning(e.text))
            elif isinstance(e, Text):
                yield chunk({"content": e.text})
            elif isinstance(e, Call):
                yield chunk({"tool_calls": [{"index": e.call.index, "id": f"call_{secrets.token_hex(12)}",
                                             "type": "function", "function": {"name": e.call.name,
                                                                              "arguments": e.call.arguments}}]})
    yield chunk({}, reply.finish_reason)
    if body.include_usage:
        yield sse.data({"id": job.rid, "object": "chat.completion.chunk", "created": created, "model": body.model,
                        "choices": [], "usage": usage(reply.result).model_dump()})
    yield sse.DONE


def _reasoning(text: str | None) -> dict[str, Any]:
    """vLLM's reasoning fields: `reasoning`, and `reasoning_content`, its older name, which clients still read."""
    return {"reasoning": text, "reasoning_content": text}
