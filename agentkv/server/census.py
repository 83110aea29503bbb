"""A large request body's JSON counted in a helper process before the server decodes it.

`json.loads` and pydantic-core hold the GIL for as long as they run, on whatever thread: a legal 8 MB body
of 200k messages held it for 1.7 s, and every stream waited (the engine thread and the event loop need it).
No thread fixes that, so what decides whether a body is worth decoding runs in another process: it decodes
the raw bytes and counts the body's items (objects, arrays and strings, keys included) and its scalars
(numbers, true, false, null). A body over `max_items` items, or over `max_scalars` scalars (token ids: a
prompt longer than the context never fits), is refused with a 413 naming the field that holds most of them;
a body that is not JSON gets its 400 there too. What passes is decoded by the server at a bounded cost.

A body shorter than two bytes an item cannot hold too many (each takes at least two: `""`, `{}`, `[]`,
`1,`), so only bodies past that size cross to the helper.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from agentkv.server.errors import APIError

PARENT_POLL_S = 1.0
HELPER_NICENESS = 5  # the count is background work: the engine thread comes first for the CPU
ITEMS, SCALARS = "items (objects, arrays, strings)", "numbers, booleans and nulls"


@dataclass(slots=True)
class Refusal:
    """Why a body is refused, as plain data (it crosses back from the helper process)."""

    status: int
    message: str
    code: str


def refusal(raw: bytes, max_items: int, max_scalars: int) -> Refusal | None:
    """In the helper: the body decoded and counted; None when the server may decode it itself."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        return Refusal(400, f"malformed JSON body: {e.msg}", "invalid_json")
    except (ValueError, RecursionError):  # not UTF-8, or nested past the decoder's stack
        return Refusal(400, "There was an error parsing the body", "invalid_json")
    fields = data.items() if isinstance(data, dict) else [("body", data)]
    counts = {str(k): tally(v) for k, v in fields}
    for i, (kind, limit, flag) in enumerate(((ITEMS, max_items, "--max-body-items"),
                                            (SCALARS, max_scalars, "--max-model-len + --max-body-items"))):
        n = sum(c[i] for c in counts.values())
        if n > limit:
            where = max(counts, key=lambda k: counts[k][i])
            return Refusal(413, f"request body: {n} JSON {kind}, {counts[where][i]} of them in '{where[:64]}'; "
                           f"this server takes at most {limit} ({flag})", "too_many_items")
    return None


def tally(value: Any) -> tuple[int, int]:
    """(items, scalars) in a decoded JSON value; iterative, so no nesting overflows the stack."""
    items = scalars = 0
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            items += 1 + len(v)  # the object and its keys
            stack.extend(v.values())
        elif isinstance(v, list):
            items += 1
            stack.extend(v)
        elif isinstance(v, str):
            items += 1
        else:
            scalars += 1
    return items, scalars


def _helper_start() -> None:
    """In the helper, first: a lower CPU priority, and an end when the server ends (a killed server's helper
    would otherwise live on, holding its pipes)."""
    os.nice(HELPER_NICENESS)
    server = os.getppid()
    threading.Thread(target=_exit_with, args=(server,), daemon=True).start()


def _exit_with(server: int) -> None:
    while os.getppid() == server:
        time.sleep(PARENT_POLL_S)
    os._exit(0)


@dataclass(slots=True)
class Census:
    """The server's gate for large bodies: one helper process, started with the server."""

    max_items: int
    max_scalars: int
    pool: ProcessPoolExecutor | None = None

    def start(self) -> None:
        """The helper started now (spawning it takes the server's CPU for a moment: not while streams run)."""
        self.pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=_helper_start)
        self.pool.submit(tally, None).result()

    async def check(self, raw: bytes) -> None:
        """APIError (413, or 400 for a body that is not JSON) if the body must not be decoded here."""
        if len(raw) < 2 * min(self.max_items, self.max_scalars):
            return
        if self.pool is None:  # not started with the server (a replica run without lifespan), or it died
            await asyncio.to_thread(self.start)
        try:
            found = await asyncio.get_running_loop().run_in_executor(
                self.pool, refusal, raw, self.max_items, self.max_scalars)
        except BrokenProcessPool:  # the helper died (killed, out of memory): a fresh one for the next body
            self.pool = None
            raise APIError(503, "the server's body-counting helper process died; retry",
                           code="service_unavailable", headers={"Retry-After": "1"}) from None
        if found is not None:
            raise APIError(found.status, found.message, code=found.code)

    def close(self) -> None:
        """The helper ended and its queues released (their semaphores would be reported leaked at exit)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None
