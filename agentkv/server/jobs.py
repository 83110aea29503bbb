"""One request in flight, from admission to its last token: the bounded queue, the engine stream, latency
metrics and cancellation when the client goes away.

A driver task owns each request: it reads the engine's stream to the end (the engine always ends it,
finished or aborted), hands deltas to the response through a queue, and does the bookkeeping in one place.
A watcher task aborts the request when the client disconnects, whether or not the response has started,
so a dropped client frees its KV blocks at once and the in-flight count can never leak.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from agentkv.engine.async_llm import EngineDead
from agentkv.server.errors import APIError
from agentkv.server.metrics import Metrics

log = logging.getLogger("agentkv.server")


@dataclass(slots=True)
class Result:
    """What a finished request returns, accumulated from its deltas."""

    pieces: list[str] = field(default_factory=list)  # the text, joined when read (no copy per delta)
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str = ""
    stop_string: str | None = None  # the stop string the engine matched (cut from the text)
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cached_tokens_per_tier: dict[str, int] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def add(self, d: Any) -> None:
        if d.text:
            self.pieces.append(d.text)
        self.token_ids += d.token_ids
        if d.prompt_tokens:  # an abort's final delta carries no counts
            self.prompt_tokens, self.output_tokens = d.prompt_tokens, d.output_tokens
            self.cached_tokens, self.cached_tokens_per_tier = d.cached_tokens, dict(d.cached_tokens_per_tier)
        if d.finished:
            self.finish_reason, self.stop_string = d.finish_reason or "stop", d.stop_string


class Jobs:
    """Admission (at most `max_num_seqs + max_queue` requests in flight, else 429) and the drivers."""

    def __init__(self, engine: Any, metrics: Metrics, max_num_seqs: int, max_queue: int) -> None:
        self.engine, self.metrics = engine, metrics
        self.limit = max_num_seqs + max_queue
        self.max_num_seqs = max_num_seqs
        self.in_flight = 0
        self.mean_e2e = 1.0  # seconds, moving average: what a rejected client is told to wait
        self.tasks: set[asyncio.Task] = set()

    async def submit(self, request: Request, endpoint: str, arrival: float, prompt: list[int], params: Any,
                     **engine_kw: Any) -> AsyncIterator[Any]:
        """Admit a request and wait for its first delta, or raise APIError (429 when full, 400 when the engine
        refuses it, 503 when it is down): errors get a proper status before any response byte is sent, at no
        cost to the first token. The returned iterator yields every delta, the first included."""
        if self.in_flight >= self.limit:
            self.metrics.rejected.labels("queue_full").inc()
            wait = max(1, math.ceil(self.mean_e2e * (self.in_flight - self.limit + 1 + self.max_num_seqs)
                                    / self.max_num_seqs))
            raise APIError(429, f"server busy: {self.in_flight} requests in flight (limit {self.limit}); retry "
                           f"after {wait} s", code="queue_full", headers={"Retry-After": str(wait)})
        try:
            stream = self.engine.add_request(prompt, params, **engine_kw)
        except Exception as e:
            raise self._refused(e) from None
        rid = engine_kw.get("request_id")
        queue: asyncio.Queue = asyncio.Queue()
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        task = asyncio.create_task(self._drive(request, endpoint, arrival, rid, stream, queue))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        deltas = self._read(queue, rid)
        first = await anext(deltas)
        return _prepend(first, deltas)

    def _refused(self, e: BaseException) -> APIError:
        if isinstance(e, ValueError):
            self.metrics.rejected.labels("invalid").inc()
            return APIError(400, str(e), code="invalid_prompt")
        if isinstance(e, EngineDead):
            self.metrics.rejected.labels("engine_down").inc()
            return APIError(503, str(e), code="engine_unavailable")
        log.error("request failed: %s: %s", type(e).__name__, e)
        self.metrics.rejected.labels("error").inc()
        return APIError(500, f"internal error: {type(e).__name__}: {e}", code="internal_error")

    async def _read(self, queue: asyncio.Queue, rid: str) -> AsyncIterator[Any]:
        done = False
        try:
            while not done:
                d = await queue.get()
                if isinstance(d, BaseException):
                    raise self._refused(d)
                done = d.finished
                yield d
        finally:
            if not done:  # the response went away first (cancelled, or its client gone): stop the work
                self.engine.abort(rid)

    async def _drive(self, request: Request, endpoint: str, arrival: float, rid: str, stream: AsyncIterator[Any],
                     queue: asyncio.Queue) -> None:
        watcher = asyncio.create_task(_abort_on_disconnect(request, lambda: self.engine.abort(rid)))
        first = last = math.nan
        result = Result()
        try:
            async for d in stream:
                now = time.monotonic()
                if d.token_ids and math.isnan(first):
                    first = now
                    self.metrics.ttft.observe(now - arrival)
                last = now
                result.add(d)
                queue.put_nowait(d)
        except BaseException as e:  # the engine failed this request: the response reports it
            queue.put_nowait(e)
            raise
        finally:
            watcher.cancel()
            self.in_flight -= 1
            self.metrics.in_flight.set(self.in_flight)
            self._account(endpoint, rid, result, arrival, first, last)

    def _account(self, endpoint: str, rid: str, r: Result, arrival: float, first: float, last: float) -> None:
        log.info("%s %s: %d prompt tokens (%d cached), %d output tokens, %s", endpoint, rid, r.prompt_tokens,
                 r.cached_tokens, r.output_tokens, r.finish_reason or "error")
        m = self.metrics
        m.requests.labels(endpoint, r.finish_reason or "error").inc()
        m.prompt_tokens.inc(r.prompt_tokens)
        m.generation_tokens.inc(r.output_tokens)
        if not math.isnan(last):
            m.e2e.observe(last - arrival)
            self.mean_e2e = 0.9 * self.mean_e2e + 0.1 * (last - arrival)
        if r.output_tokens > 1 and not math.isnan(first):
            m.tpot.observe((last - first) / (r.output_tokens - 1))


async def _prepend(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    try:
        yield first
        async for d in rest:
            yield d
    finally:
        await rest.aclose()  # type: ignore[attr-defined]  # its cleanup aborts an unfinished request


async def _abort_on_disconnect(request: Request, abort: Callable[[], Any]) -> None:
    """After the body is read, the next ASGI message is the client going away (or the response completing,
    by which time this task has been cancelled)."""
    with contextlib.suppress(asyncio.CancelledError):
        while (await request.receive())["type"] != "http.disconnect":
            pass
        abort()
