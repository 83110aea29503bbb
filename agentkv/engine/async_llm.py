"""The engine loop a server drives: `LLM.step` on its own thread, a thread-safe inbox, per-request streams.

Only the engine thread touches the `LLM` (scheduler, core, pages). Callers on any thread put adds and aborts
into the inbox; the loop drains it before every step, runs the step, and pushes each request's delta (new
token ids, newly decoded text, finish reason, cached tokens per tier) to that request's stream, which is an
async iterator (for asyncio callers) and a plain iterator (for threads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from agentkv.engine.llm import LLM, REPLY_KINDS, Prompt
from agentkv.engine.outputs import RequestOutput
from agentkv.engine.sequence import SamplingParams

log = logging.getLogger("agentkv.engine")


@dataclass(slots=True)
class RequestDelta:
    request_id: str
    token_ids: list[int]  # new this step
    text: str  # new text (a stop string's possible beginning is held back until it is decided)
    finished: bool
    finish_reason: str | None  # "stop" | "length" | "abort" once finished
    prompt_tokens: int
    output_tokens: int  # so far
    cached_tokens: int
    cached_tokens_per_tier: dict[str, int]
    stop_string: str | None = None  # the stop string that ended it (cut from the text), once finished


@dataclass(slots=True)
class EngineStats:
    waiting: int = 0
    running: int = 0
    kv_blocks_used: dict[str, int] = field(default_factory=dict)
    kv_blocks_total: dict[str, int] = field(default_factory=dict)
    prefix_query_tokens: int = 0  # prompt tokens looked up in the prefix cache
    prefix_hit_tokens: int = 0
    hit_tokens_per_tier: dict[str, int] = field(default_factory=dict)
    preemptions: int = 0
    steps: int = 0


class EngineDead(RuntimeError):
    """The engine loop stopped on an error; no request can be served."""


_END = object()


class RequestStream:
    """One request's deltas, iterable from asyncio (`async for`) or from a thread (`for`)."""

    def __init__(self, request_id: str, loop: asyncio.AbstractEventLoop | None) -> None:
        self.request_id = request_id
        self._loop = loop
        self._aq: asyncio.Queue | None = asyncio.Queue() if loop is not None else None
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self.finished = False

    def push(self, item: RequestDelta | BaseException | object) -> None:
        """Called on the engine thread."""
        if self._aq is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the caller's event loop is closed: nobody is listening
                self._loop.call_soon_threadsafe(self._aq.put_nowait, item)
        else:
            self._q.put(item)

    def _unwrap(self, item: Any) -> RequestDelta:
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        self.finished = item.finished
        return item

    def __aiter__(self) -> AsyncIterator[RequestDelta]:
        return self

    async def __anext__(self) -> RequestDelta:
        if self.finished:
            raise StopAsyncIteration
        assert self._aq is not None, "this stream was created outside an event loop: iterate it with `for`"
        return self._unwrap(await self._aq.get())

    def __iter__(self) -> Iterator[RequestDelta]:
        while not self.finished:
            try:
                yield self._unwrap(self._q.get())
            except StopAsyncIteration:
                return


@dataclass(slots=True)
class AddRequest:
    """A request crossing to the engine thread, its prompt checked on the caller's."""

    stream: RequestStream
    prompt: list[int]
    params: SamplingParams
    matcher: Any  # its grammar's fresh state, or None
    session: str | None
    tenant: str
    cache_salt: str
    public_prefix_tokens: int


@dataclass(slots=True)
class Abort:
    request_id: str


@dataclass(slots=True)
class Classify:
    """How a session's last reply ended (`LLM.classify`), from the server that parsed its tool calls."""

    session: str
    kind: str


@dataclass(slots=True)
class _Sent:
    """How much of a request's reply its stream has had."""

    tokens: int = 0


class AsyncLLM:
    def __init__(self, llm: LLM, on_death: Callable[[BaseException], None] | None = None) -> None:
        """on_death: called (on the engine thread) if the loop ever stops on an error, e.g. to end the process
        so that its supervisor restarts it rather than leaving a server that answers 503 for ever."""
        self.llm = llm
        self.on_death = on_death
        self.tokenizer = llm.tokenizer
        self.config = llm.config
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._streams: dict[str, tuple[RequestStream, _Sent]] = {}
        self._stats = EngineStats()
        self._stopping = False
        self._drain = True
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="agentkv-engine", daemon=True)
        self._thread.start()

    # ---- any thread ----------------------------------------------------------------------------------------
    def add_request(self, prompt: Prompt, params: SamplingParams | None = None, *, request_id: str | None = None,
                    session: str | None = None, tenant: str = "", cache_salt: str = "",
                    public_prefix_tokens: int = 0, grammar: Any = None) -> RequestStream:
        """Queue a request; bad input (empty, over the context) raises ValueError here, at once. `grammar`: its
        structured output compiled already (`Grammars.compile`, as the server does off its event loop)."""
        if self.error is not None or self._stopping:
            raise EngineDead("the engine is not running" if self.error is None else f"the engine failed: {self.error}")
        params = params or SamplingParams()
        params.check()
        ids = self.llm.tokens_of(prompt, params)
        if params.structured_outputs is not None and grammar is None:  # compiled here: the engine thread never does
            grammar = self.llm.grammars.compile(params.structured_outputs)
        rid = request_id or uuid.uuid4().hex
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        stream = RequestStream(rid, loop)
        matcher = grammar.deep_copy() if grammar is not None else None
        self._inbox.put(AddRequest(stream, ids, params, matcher, session, tenant, cache_salt, public_prefix_tokens))
        self._wake.set()
        return stream

    async def generate(self, prompt: Prompt, params: SamplingParams | None = None, **kw: Any,
                       ) -> AsyncIterator[RequestDelta]:
        """Stream a request's deltas; leaving the loop early (a client gone) aborts it."""
        stream = self.add_request(prompt, params, **kw)
        try:
            async for delta in stream:
                yield delta
        finally:
            if not stream.finished:
                self.abort(stream.request_id)

    def abort(self, request_id: str) -> None:
        self._inbox.put(Abort(request_id))
        self._wake.set()

    def classify(self, session: str, kind: str) -> None:
        """`LLM.classify` on the engine thread. Queued behind the reply's last delta and ahead of anything its
        client sends after reading it, so the session's next request finds the kind already filed."""
        if kind not in REPLY_KINDS:
            raise ValueError(f"kind must be one of {', '.join(REPLY_KINDS)}, got {kind!r}")
        self._inbox.put(Classify(session, kind))
        self._wake.set()

    def stats(self) -> EngineStats:
        return self._stats

    def shutdown(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop the loop: with `drain`, after the requests in flight finish; else abort them."""
        self._drain = drain
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    # ---- the engine thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while True:
                self._take_inbox()
                if self._stopping and (not self._drain or not self.llm.has_unfinished_requests()):
                    break
                if not self.llm.has_unfinished_requests():
                    self._publish_stats()
                    self._wake.wait(0.5)
                    self._wake.clear()
                    continue
                for out in self.llm.step():
                    self._deliver(out)
                self._publish_stats()
        except BaseException as e:  # every stream must hear of it, whatever it is
            log.exception("engine loop failed")
            self.error = e
        for rid, (stream, _) in list(self._streams.items()):
            if self.error is not None:
                stream.push(EngineDead(f"the engine failed: {self.error}"))
            else:
                self.llm.abort(rid)
                stream.push(self._final_abort(rid))
            stream.push(_END)
        self._streams.clear()
        if self.error is not None and self.on_death is not None:
            self.on_death(self.error)

    def _take_inbox(self) -> None:
        while True:
            try:
                msg = self._inbox.get_nowait()
            except queue.Empty:
                return
            if isinstance(msg, AddRequest):
                self._add(msg)
            elif isinstance(msg, Classify):
                self.llm.classify(msg.session, msg.kind)
            elif msg.request_id in self._streams and self.llm.abort(msg.request_id):
                stream, _ = self._streams.pop(msg.request_id)
                stream.push(self._final_abort(msg.request_id))

    def _add(self, msg: AddRequest) -> None:
        rid = msg.stream.request_id
        try:
            self.llm.admit(msg.prompt, msg.params, msg.matcher, request_id=rid, session=msg.session,
                           tenant=msg.tenant, cache_salt=msg.cache_salt, public_prefix_tokens=msg.public_prefix_tokens)
        except Exception as e:  # refused (the engine keeps nothing of it): this request fails, not the loop
            if not isinstance(e, ValueError):  # not a refusal: undo whatever part of it was queued
                log.exception("request %s could not be added", rid)
                self.llm.abort(rid)
            msg.stream.push(e)
            return
        self._streams[rid] = (msg.stream, _Sent())

    def _final_abort(self, rid: str) -> RequestDelta:
        return RequestDelta(rid, [], "", True, "abort", 0, 0, 0, {})

    def _deliver(self, out: RequestOutput) -> None:
        """The step's news for one request: its new token ids and the new part of its text (the engine's
        detokenizer made it; while the reply runs, what may begin a stop string is held back there)."""
        entry = self._streams.get(out.request_id)
        if entry is None:
            return
        stream, sent = entry
        c = out.outputs[0]
        fresh = c.token_ids[sent.tokens :]
        sent.tokens = len(c.token_ids)
        stop = c.stop_reason if isinstance(c.stop_reason, str) else None
        stream.push(RequestDelta(out.request_id, fresh, c.delta, out.finished, c.finish_reason,
                                 len(out.prompt_token_ids), len(c.token_ids), out.num_cached_tokens,
                                 dict(out.cached_tokens_per_tier), stop))
        if out.finished:
            del self._streams[out.request_id]

    def _publish_stats(self) -> None:
        llm = self.llm
        cache = llm.cache
        names = llm.tier_names
        used = [int(cache.used[0] + cache.reserved)] + [int(u) for u in cache.used[1:]]
        self._stats = EngineStats(
            waiting=len(llm.scheduler.waiting), running=len(llm.scheduler.running),
            kv_blocks_used=dict(zip(names, used, strict=True)),
            kv_blocks_total={n: int(c) for n, c in zip(names, cache.capacity, strict=True)},
            prefix_query_tokens=llm.prefix_query_tokens, prefix_hit_tokens=int(llm.prefix_hit_tokens.sum()),
            hit_tokens_per_tier={n: int(h) for n, h in zip(names, llm.prefix_hit_tokens, strict=True)},
            preemptions=llm.scheduler.preemptions, steps=self._stats.steps + 1)
