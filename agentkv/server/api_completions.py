"""OpenAI `/v1/completions`: one prompt (text or token ids) as an `Ask`; the reply as a `text_completion`,
whole or streamed. No template, no tools, no thinking: the reply is all text."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from agentkv.server import openai_protocol as oai
from agentkv.server import sse
from agentkv.server.openai_common import sampling, usage, with_ids
from agentkv.server.pipeline import Ask, Context, Job, Pipeline, session_of
from agentkv.server.reply import Reply, whole


def to_request(body: oai.CompletionRequest, headers: Mapping[str, str], ctx: Context) -> Ask:
    return Ask("completions", prompt=body.prompt, max_tokens=body.max_tokens, session=session_of(headers, body.user),
               param="prompt", **sampling(body))


async def handle(pipe: Pipeline, body: oai.CompletionRequest, request: Request, tenant: str) -> Response:
    job = await pipe.start(to_request, body, request, tenant)
    reply = Reply(None, False)
    if body.stream:
        return sse.response(_stream(job, reply, body), anthropic=False)
    w = await whole(reply, job.deltas)
    out = oai.Completion(id=job.rid, created=int(time.time()), model=body.model, usage=usage(w.result),
                         choices=[oai.CompletionChoice(text=w.content, finish_reason=w.result.finish_reason)])
    return JSONResponse(with_ids(out.model_dump(), body, job.prompt, w.result.token_ids, prompt_on_choice=True))


async def _stream(job: Job, reply: Reply, body: oai.CompletionRequest) -> AsyncIterator[str]:
    created, first = int(time.time()), True
    async for d in job.deltas:
        reply.feed(d)
        if d.text or d.finished or (body.return_token_ids and d.token_ids):  # a token may decode to no text
            obj = {"id": job.rid, "object": "text_completion", "created": created, "model": body.model,
                   "choices": [{"index": 0, "text": d.text, "logprobs": None,
                                "finish_reason": reply.result.finish_reason or None}]}
            yield sse.data(with_ids(obj, body, job.prompt if first else None, d.token_ids, prompt_on_choice=True))
            first = False
    if body.include_usage:
        yield sse.data({"id": job.rid, "object": "text_completion", "created": created, "model": body.model,
                        "choices": [], "usage": usage(reply.result).model_dump()})
    yield sse.DONE
