"""Moves pages to and from tier stores off the engine thread, one worker thread per store (and one for its lookups).

The engine submits batches and gets futures back: offloads (`put`) run in the background, while loads (`get`)
are urgent and jump ahead of queued offloads, so a request waits only for the blocks it needs, not for the
whole backlog. Each store's worker runs its jobs one at a time, which is all a `TierStore` asks for; disk and
Redis work in parallel on their own workers.

`put` snapshots its pages into a staging buffer before returning (pinned, filled by an asynchronous copy on a
side stream on CUDA), so the engine may reuse the source page at once. Until the put has run, a `get` of the
same block is served from that snapshot: a block offloaded a moment ago is still a hit. A job that raises is
logged and reads as "nothing stored" / "all missed": storage never raises into the engine.

A store that hangs (a stopped Redis) holds its worker, and puts queue behind it: past `MAX_BACKLOG_BYTES` of
snapshots waiting for one store, further puts are skipped (the blocks are simply not stored there, which a
lossy tier allows), so a hung store cannot grow the engine's memory without bound.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import torch

from agentkv.storage.base import BlockKey, TierStore

log = logging.getLogger(__name__)
MAX_BACKLOG_BYTES = 512 << 20  # snapshots queued for one store at most


@dataclass(slots=True)
class _Staged:
    key: BlockKey
    batch: torch.Tensor  # the put's whole snapshot; row `i` is this block
    i: int
    ready: torch.cuda.Event | None


@dataclass(slots=True)
class _Worker:
    store: TierStore
    urgent: deque = field(default_factory=deque)
    background: deque = field(default_factory=deque)
    staged: dict[bytes, _Staged] = field(default_factory=dict)  # digest -> snapshot of a put not yet run
    wake: threading.Condition = field(default_factory=threading.Condition)
    closing: bool = False
    thread: threading.Thread | None = None
    backlog_bytes: int = 0  # snapshots of puts submitted and not yet run
    skipped: int = 0  # puts skipped over the backlog since the last warning


class Mover:
    def __init__(self) -> None:
        self._workers: dict[tuple[int, str], _Worker] = {}
        self._stream = torch.cuda.Stream() if torch.cuda.is_available() else None

    # ---- submissions (engine thread) -----------------------------------------------------------------------
    def put(self, store: TierStore, keys: Sequence[BlockKey], pages: torch.Tensor) -> Future[None]:
        """Store a snapshot of `pages` [len(keys), page_bytes] under `keys` in the background (skipped while
        the store's backlog is over MAX_BACKLOG_BYTES)."""
        w = self._worker(store)
        size = pages.numel() * pages.element_size()
        with w.wake:
            if w.backlog_bytes + size > MAX_BACKLOG_BYTES:
                if w.skipped == 0:
                    log.warning("tier %s is not keeping up (%d MiB queued): puts skipped until it does",
                                store.name, w.backlog_bytes >> 20)
                w.skipped += 1
                done: Future = Future()
                done.set_result(None)
                return done
            if w.skipped:
                log.warning("tier %s keeps up again (%d puts were skipped)", store.name, w.skipped)
                w.skipped = 0
            w.backlog_bytes += size
        host, ready = self._snapshot(pages)
        with w.wake:
            for i, key in enumerate(keys):
                w.staged[key.digest] = _Staged(key, host, i, ready)

        def run() -> None:
            if ready is not None:
                ready.synchronize()
            try:
                store.put(keys, host)
            finally:
                with w.wake:
                    w.backlog_bytes -= size
                    for key in keys:
                        if (s := w.staged.get(key.digest)) is not None and s.batch is host:
                            del w.staged[key.digest]

        return self._submit(w, run, None, urgent=False)

    def get(self, store: TierStore, keys: Sequence[BlockKey], out: torch.Tensor) -> Future[np.ndarray]:
        """Load `keys` into rows of `out` ahead of queued offloads; the future gives the found mask. `out`
        must not be read before then."""
        w = self._worker(store)

        def run() -> np.ndarray:
            with w.wake:
                staged = [w.staged.get(k.digest) for k in keys]
            hit = np.array([s is not None and s.key == k for s, k in zip(staged, keys, strict=True)], dtype=bool)
            found = hit.copy()
            rest = np.flatnonzero(~hit)
            if len(rest):
                buf = out if len(rest) == len(keys) else torch.empty((len(rest), out.shape[1]), dtype=torch.uint8,
                                                                     device=out.device)
                found[rest] = store.get([keys[i] for i in rest], buf)
                if buf is not out:
                    out[torch.from_numpy(rest).to(out.device)] = buf
            for i in np.flatnonzero(hit):
                s = staged[i]
                if s.ready is not None:
                    s.ready.synchronize()
                out[i].copy_(s.batch[s.i])
            return found

        return self._submit(w, run, np.zeros(len(keys), dtype=bool), urgent=True)

    def staged(self, store: TierStore, keys: Sequence[BlockKey]) -> np.ndarray:
        """Which keys have a put submitted and not yet run (a get is served from its snapshot meanwhile)."""
        w = self._worker(store)
        with w.wake:
            return np.array([(s := w.staged.get(k.digest)) is not None and s.key == k for k in keys], dtype=bool)

    def contains(self, store: TierStore, keys: Sequence[BlockKey]) -> Future[np.ndarray]:
        """Ask the store which keys it holds, on a worker of its own (a lookup never waits for a put to finish;
        snapshots not counted)."""
        return self._submit(self._worker(store, "lookup"), lambda: store.contains(keys),
                            np.zeros(len(keys), dtype=bool), urgent=True)

    def touch(self, store: TierStore, keys: Sequence[BlockKey]) -> Future[None]:
        """Mark keys as used now, in the background (a store with its own eviction keeps them longer)."""
        return self._submit(self._worker(store), lambda: store.touch(keys), None, urgent=False)

    def drop(self, store: TierStore, keys: Sequence[BlockKey]) -> Future[None]:
        """Forget keys, after every put submitted before."""
        return self._submit(self._worker(store), lambda: store.drop(keys), None, urgent=False)

    def barrier(self, store: TierStore) -> Future[None]:
        """Resolves once every job submitted to `store` before it has run."""
        return self._submit(self._worker(store), lambda: None, None, urgent=False)

    def close(self) -> None:
        """Finish queued jobs, then stop the workers (stores stay open: their owner closes them)."""
        for w in self._workers.values():
            with w.wake:
                w.closing = True
                w.wake.notify()
        for w in self._workers.values():
            if w.thread is not None:
                w.thread.join()
        self._workers.clear()

    # ---- workers -------------------------------------------------------------------------------------------
    def _snapshot(self, pages: torch.Tensor) -> tuple[torch.Tensor, torch.cuda.Event | None]:
        if pages.device.type == "cpu":
            return pages.clone(), None
        host = torch.empty(pages.shape, dtype=torch.uint8, pin_memory=True)
        main = torch.cuda.current_stream(pages.device)
        self._stream.wait_stream(main)
        with torch.cuda.stream(self._stream):
            host.copy_(pages, non_blocking=True)
            pages.record_stream(self._stream)
            ready = torch.cuda.Event()
            ready.record(self._stream)
        main.wait_event(ready)  # the engine's next writes to these pages wait for the copy, not the CPU
        return host, ready

    def _worker(self, store: TierStore, lane: str = "move") -> _Worker:
        w = self._workers.get((id(store), lane))
        if w is None:
            w = self._workers[(id(store), lane)] = _Worker(store)
            w.thread = threading.Thread(target=self._loop, args=(w,), name=f"agentkv-mover-{store.name}", daemon=True)
            w.thread.start()
        return w

    def _submit(self, w: _Worker, fn: Callable[[], object], on_error: object, urgent: bool) -> Future:
        fut: Future = Future()
        with w.wake:
            if w.closing:
                raise RuntimeError("mover is closed")
            (w.urgent if urgent else w.background).append((fn, fut, on_error))
            w.wake.notify()
        return fut

    @staticmethod
    def _loop(w: _Worker) -> None:
        while True:
            with w.wake:
                while not (w.urgent or w.background or w.closing):
                    w.wake.wait()
                if not (w.urgent or w.background):
                    return
                fn, fut, on_error = (w.urgent or w.background).popleft()
            try:
                fut.set_result(fn())
            except Exception:
                log.exception("tier %s: a storage job failed; treated as a miss", w.store.name)
                fut.set_result(on_error)
