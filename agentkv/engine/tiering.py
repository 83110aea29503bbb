"""The engine's tiers below the GPU, as `kv_tiers` names them, and what makes them safe to be slow or lossy.

- host DRAM is the in-process slab (`HostSlab`), moved synchronously: a copy, trusted.
- disk and Redis stores are reached through the mover (`MovedStore`): offloads return at once (the mover
  snapshots the pages), loads are urgent jobs that overtake queued offloads. When a request is added, the
  blocks of its prefix that only disk or Redis hold are fetched at once (`admit`), so the fetch overlaps
  the steps that run before the request is admitted; its promotions then take the verified pages at hand.
- the agent-aware policy's prefetches (a session predicted to return) promote a disk or Redis block only once
  it is loaded (`at_hand`): the load starts when the prediction is made, the promotion waits for it, the
  step does not.
- blocks the policy core does not know about are adopted at admission: a disk store reopened after a restart,
  or a Redis shared with other engine processes (same model, codec and tenant: same keys), may hold the
  prefix already.
- a promotion that misses (a corrupted or truncated record, a key Redis evicted, Redis down) cannot be served:
  the block's page is marked poisoned, the lower tier's copy is forgotten by the core, and every request
  about to read the block recomputes from it (`repair`), rewriting the page, so no wrong KV is ever read.
- a sliding model's window pages (engine/sliding.py) have stores of their own beside each disk and Redis
  tier (`window_stores`: a `window` folder, a key prefix), written through as they are named and read back
  when a hit's window is gone, outside the core's accounts (the core counts the pool's blocks). On disk a
  block's window page leaves with its full page (the core's eviction drops both), and the folder holds as
  many window pages as the tier holds full ones, its least recently used evicted for new ones; a window page
  is only read back for a hit's blocks (their full pages are there), verified by key, else recomputed.
- every block the engine names is written through, in the background, to Redis (other processes find it)
  and to disk (a kill keeps it: the next engine rescans the slots); at shutdown the blocks only GPU and DRAM
  hold are written to disk too, so the next engine on the folder finds them.
- a lookup in Redis is a network round trip that may hang: it runs on the mover and the engine waits for it
  LOOKUP_S at most; a store that misses the deadline counts as holding nothing, and is not asked again until
  that lookup returns, so a hung Redis costs one step LOOKUP_S once, not a socket timeout per request. (Disk
  lookups read the in-memory index under a lock never held across I/O.) The engine touches the Redis copies
  of every prefix it admits, so Redis's own LRU drops chain tails before the heads.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
import torch

from agentkv.engine.sequence import rewind
from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.tiers import TierSpec
from agentkv.scheduler import Name, StepPlan
from agentkv.storage.base import BlockKey, TierStore
from agentkv.storage.host import HostSlab
from agentkv.storage.mover import Mover
from agentkv.storage.spec import TierConfig, open_store, parse_kv_tiers

log = logging.getLogger(__name__)

PROBE_EVERY = 32  # a store skipped as slower than recomputing is tried again on every 32nd admission
PREFETCH_BYTES = 256 << 20  # fetched-ahead pages kept per store at most (oldest dropped first)
LOOKUP_S = 0.1  # the longest the engine waits for a remote store's lookup
LOAD_S = 0.1  # ... and for a load it did not fetch ahead (rare: promotions wait for their prefetch)
WINDOW_PREFIX = b"akv:w:"  # Redis keys of window pages (the pool's pages: RedisStore's default, b"akv:")


class MovedStore(TierStore):
    """A disk or Redis store driven through the mover, with the pages fetched ahead for admitted requests."""

    may_lose = True

    def __init__(self, store: TierStore, mover: Mover) -> None:
        self.store, self.mover = store, mover
        self.name, self.page_bytes = store.name, store.page_bytes
        self.load_s = float("nan")  # seconds a page takes to load, smoothed over recent loads
        self.ahead: dict[bytes, tuple[BlockKey, Future, torch.Tensor, int]] = {}  # digest -> fetch in flight
        self.late: Future | None = None  # a job that missed its deadline: bypassed until it is done
        self.companion: MovedStore | None = None  # the same blocks' window pages: dropped with them

    def prefetch(self, keys: Sequence[BlockKey]) -> list[Future]:
        """Start loading `keys`; returns the loads they wait on (some may be in flight already)."""
        waits = {id(got[1]): got[1] for k in keys if (got := self.ahead.get(k.digest)) is not None}
        keys = [k for k in keys if k.digest not in self.ahead]
        if not keys:
            return list(waits.values())
        buf = torch.empty(len(keys), self.page_bytes, dtype=torch.uint8)
        fut = self._timed(self.mover.get(self.store, keys, buf), len(keys))
        waits[id(fut)] = fut
        for i, k in enumerate(keys):
            self.ahead[k.digest] = (k, fut, buf, i)
        while len(self.ahead) > max(1, PREFETCH_BYTES // self.page_bytes):
            del self.ahead[next(iter(self.ahead))]
        return list(waits.values())

    def fetched(self, keys: Sequence[BlockKey]) -> np.ndarray:
        """Which keys have a finished prefetch (found or not: a miss is then handled as a failed load)."""
        return np.array([(got := self.ahead.get(k.digest)) is not None and got[0] == k and got[1].done()
                         for k in keys], dtype=bool)

    def put(self, keys: Sequence[BlockKey], pages: torch.Tensor) -> None:
        self.mover.put(self.store, keys, pages)

    def get(self, keys: Sequence[BlockKey], out: torch.Tensor) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        rest = []
        for i, k in enumerate(keys):
            got = self.ahead.pop(k.digest, None)
            if got is not None and got[0] == k and got[1].done() and got[1].result()[got[3]]:
                out[i] = got[2][got[3]]
                found[i] = True
            else:
                rest.append(i)
        if rest and not self.bypassed():
            buf = torch.empty(len(rest), self.page_bytes, dtype=torch.uint8)
            got = self._waited(self._timed(self.mover.get(self.store, [keys[i] for i in rest], buf), len(rest)), LOAD_S)
            if got is not None:
                found[rest] = got
                out[torch.tensor(rest, device=out.device)] = buf.to(out.device)
        return found

    def bypassed(self) -> bool:
        """Is a job that missed its deadline still running (the store hangs)?"""
        if self.late is not None and self.late.done():
            log.warning("tier %s answers again", self.name)
            self.late = None
            self.load_s = float("nan")  # measured across the hang: re-measured, or the store stays skipped
            # as slower than recomputing for hundreds of requests after it recovered
        return self.late is not None

    def _waited(self, fut: Future, deadline_s: float) -> Any:
        """The job's result, or None if it takes longer than `deadline_s` (the store is then bypassed)."""
        try:
            return fut.result(timeout=deadline_s)
        except TimeoutError:
            log.warning("tier %s did not answer within %g s: bypassed until it does", self.name, deadline_s)
            self.late = fut
            return None

    def _timed(self, fut: Future, pages: int) -> Future:
        """Measure a load from submission to completion (queueing included: that is what a request waits)."""
        t0 = time.perf_counter()

        def done(_: Future) -> None:
            per_page = (time.perf_counter() - t0) / max(pages, 1)
            self.load_s = per_page if self.load_s != self.load_s else 0.7 * self.load_s + 0.3 * per_page
        fut.add_done_callback(done)
        return fut

    def drop(self, keys: Sequence[BlockKey]) -> None:
        self.mover.drop(self.store, keys)
        if self.companion is not None:
            self.companion.drop(keys)

    def contains(self, keys: Sequence[BlockKey]) -> np.ndarray:
        staged = self.mover.staged(self.store, keys)
        if not self.store.remote:
            return self.store.contains(keys) | staged
        found = None if self.bypassed() else self._waited(self.mover.contains(self.store, keys), LOOKUP_S)
        return staged if found is None else found | staged

    def touch(self, keys: Sequence[BlockKey]) -> None:
        if not self.bypassed():
            self.mover.touch(self.store, keys)

    def close(self) -> None:
        self.store.close()


class Tiering:
    def __init__(self, spec: str, page_bytes: int, block_size: int, pin: bool, sliding: Any = None) -> None:
        """spec: the `kv_tiers` string; sizes in tokens are converted at page_bytes per block_size tokens.
        sliding: the engine's sliding-window page group (engine/sliding.py), if any: its pages get stores too."""
        self.mover = Mover()
        self.tiers: list[TierSpec] = []
        self.stores: list[TierStore] = []
        self.shared: MovedStore | None = None  # the Redis tier: every block named is written through to it
        self.recompute_s = float("nan")  # seconds the engine takes to recompute one block (measured by it)
        self.admissions = 0
        self.opened: list[tuple[TierConfig, int]] = []  # each disk / Redis tier's config and capacity in pages
        self.window: list[MovedStore] = []  # a second page group's stores beside them (window_stores)
        for cfg in parse_kv_tiers(spec):
            capacity = cfg.size.to_bytes(page_bytes / block_size)
            if capacity < page_bytes:
                raise ValueError(f"kv_tiers: {cfg.kind} tier of {capacity:.0f} bytes holds no {page_bytes}-byte page")
            self.tiers.append(TierSpec(cfg.core_name, capacity, page_bytes))
            if cfg.kind == "dram":
                self.stores.append(HostSlab(self.tiers[-1].capacity_blocks, page_bytes, pin))
                continue
            try:
                opened = open_store(cfg, capacity, page_bytes)
            except OSError as e:  # a read-only or full folder: the disk tier is an optimization, not a need
                if cfg.kind != "disk":
                    raise
                log.warning("disk tier %s cannot be used (%s): serving without it", cfg.location,
                            e.strerror or e)
                self.tiers.pop()
                continue
            store = MovedStore(opened, self.mover)
            self.stores.append(store)
            self.opened.append((cfg, self.tiers[-1].capacity_blocks))
            if cfg.kind == "redis":
                self.shared = store
        if sliding is not None:  # its window pages go down to disk and Redis beside the pool's
            sliding.stores = self.window_stores(sliding.layout.page_bytes)

    def window_stores(self, page_bytes: int) -> list[MovedStore]:
        """Stores for the sliding layers' window pages (engine/sliding.py) beside each disk and Redis tier: the
        disk's in a `window` folder inside the tier's, as many pages as the tier, evicting its least recently
        used when full and dropping a block's page when the tier drops the block; Redis's under their own key
        prefix, evicted by Redis's LRU."""
        from agentkv.storage.disk import DiskStore

        beside = [s for s in self.stores if isinstance(s, MovedStore)]  # in the order of `opened`
        for (cfg, pages), full in zip(self.opened, beside, strict=True):
            if cfg.kind == "disk":
                try:
                    opened: TierStore = DiskStore(os.path.join(cfg.location or "", "window"), pages * page_bytes,
                                                  page_bytes, evicts=True)
                except (OSError, ValueError) as e:
                    log.warning("disk tier %s: no room for window pages (%s): restarts recompute windows",
                                cfg.location, getattr(e, "strerror", None) or e)
                    continue
            else:
                from agentkv.storage.redis_store import RedisStore  # as open_store: redis-py only where used

                opened = RedisStore(cfg.location or "", page_bytes, prefix=WINDOW_PREFIX)
            self.window.append(MovedStore(opened, self.mover))
            if cfg.kind == "disk":
                full.companion = self.window[-1]
        return self.window

    def measure_recompute(self, block_s: float) -> None:
        """The engine's latest cost of computing one block (seconds), smoothed."""
        r = self.recompute_s
        self.recompute_s = block_s if r != r else 0.7 * r + 0.3 * block_s

    def _slower_than_recompute(self, store: MovedStore) -> bool:
        """Skip a store whose loads take longer than recomputing (re-measured every PROBE_EVERY admissions)."""
        if self.admissions % PROBE_EVERY == 0:
            return False
        return bool(store.load_s > self.recompute_s)  # NaN (not measured yet) compares False

    def moved(self, first_tier: int) -> list[tuple[int, MovedStore]]:
        """(tier index, store) of the disk and Redis tiers; tier indices start at `first_tier`."""
        return [(t, s) for t, s in enumerate(self.stores, start=first_tier) if isinstance(s, MovedStore)]

    # ---- admission: adopt what other processes (or a previous run) stored, fetch ahead -------------------
    def admit(self, cache: KVCache, keys_of: list, ids: np.ndarray) -> list[Future]:
        """Before a request queues: account the blocks of its prefix found only in disk or Redis stores, and
        start fetching the prefix blocks that only those tiers hold; returns the loads it waits on (the
        scheduler admits it once they are done, so running requests never wait for them)."""
        if not len(ids):
            return []
        first = self.first_tier(cache)
        self.admissions += 1
        moved = [(t, st) for t, st in self.moved(first) if not self._slower_than_recompute(st)]
        cache.tier_of(ids)  # sizes the core's arrays for these ids
        for t, st in self.moved(first):
            if (t, st) not in moved:  # its copies of this prefix are worth less than recomputing: misses
                cache.lose(t, ids[(cache.where[ids] & (1 << t)) != 0])
        tier = cache.tier_of(ids)
        known = int(np.argmax(tier < 0)) if (tier < 0).any() else len(ids)
        rest = ids[known:]
        if len(rest):
            where = np.full(len(rest), -1)
            keys = [keys_of[b] for b in rest.tolist()]
            for t, store in moved:
                miss = np.flatnonzero(where < 0)
                if not len(miss):
                    break
                where[miss[store.contains([keys[i] for i in miss])]] = t
            run = int(np.argmax(where < 0)) if (where < 0).any() else len(rest)
            for t in np.unique(where[:run]).tolist():
                cache.adopt(t, rest[:run][where[:run] == t])
            tier = cache.tier_of(ids)
        lead = int(np.argmax(tier < 0)) if (tier < 0).any() else len(ids)  # only a cached prefix is of use
        if self.shared is not None:  # its heads stay the most recently used keys in Redis
            held = ids[(cache.where[ids] & (1 << (first + self.stores.index(self.shared)))) != 0]
            if len(held):
                self.shared.touch([keys_of[b] for b in held.tolist()])
        waits: list[Future] = []
        for t, store in moved:
            fetch = ids[:lead][tier[:lead] == t]
            if len(fetch):
                waits += store.prefetch([keys_of[b] for b in fetch.tolist()])
        return waits

    def first_tier(self, cache: KVCache) -> int:
        """The core's index of the first of these stores: they are the core's last tiers."""
        return len(cache.tiers) - len(self.stores)

    def at_hand(self, cache: KVCache, keys_of: list, tier: int, ids: np.ndarray) -> np.ndarray:
        """The policy's prefetch from tier `tier` (the core's index) may promote these blocks now: all of DRAM's,
        and those a disk or Redis load has brought in; the rest start loading, in the background, so that a
        later step promotes them without waiting."""
        store = self.stores[tier - self.first_tier(cache)]
        if not isinstance(store, MovedStore):
            return np.ones(len(ids), dtype=bool)
        keys = [keys_of[b] for b in ids.tolist()]
        store.prefetch(keys)
        return store.fetched(keys)

    # ---- after the pool carried out a plan ---------------------------------------------------------------
    def repair(self, plan: StepPlan, pool, cache: KVCache, block_size: int) -> None:
        """Forget the lower-tier copies that failed to load; make every prefill that would read a poisoned page
        recompute from it; write newly named blocks through to Redis."""
        first = self.first_tier(cache)
        for tier, ids in pool.lost:
            log.warning("tier %s lost %d blocks (a load failed verification or missed): they will be recomputed",
                        cache.tiers[tier].name, len(ids))
            cache.lose(tier, np.asarray(ids, dtype=np.int64))
        pool.lost = []
        for t, store in self.moved(first):  # a full disk shrinks its tier
            cap = getattr(store.store, "capacity_pages", None)
            if cap is not None and cap < cache.capacity[t]:
                cache.capacity[t] = cap
        if pool.poisoned:
            self._recompute_poisoned(plan, pool, block_size)
        self._write_through(plan, pool, cache, first)

    def _recompute_poisoned(self, plan: StepPlan, pool, bs: int) -> None:
        bad = {pool.page_of[b]: b for b in pool.poisoned if b in pool.page_of}
        healed = set()
        for chunk in plan.prefills:
            seq = chunk.seq
            read = -(-chunk.start // bs)  # blocks this chunk reads rather than writes
            first = next((i for i in range(read) if seq.pages[i] in bad), None)  # type: ignore[attr-defined]
            if first is None:
                continue
            start = first * bs
            log.info("request %s recomputes from token %d: a block it was to read was lost", seq.request_id, start)
            rewind(chunk, start, chunk.n + chunk.start - start)
            healed |= {bad[p] for p in seq.pages[first:read] if p in bad}  # type: ignore[attr-defined]
        pool.poisoned -= healed  # this step's forward pass rewrites them

    def _write_through(self, plan: StepPlan, pool, cache: KVCache, first: int) -> None:
        """Blocks named this step go to Redis at once (all of them, for the other processes that share it) and
        to disk (while it has room, so that a kill keeps them); the core counts them there while the tier has
        room (so a block leaving DRAM is not written again)."""
        ids = [b for op in plan.ops if isinstance(op, Name) for b in op.ids.tolist()
               if b in pool.page_of and b not in pool.poisoned]
        moved = self.moved(first)
        if not ids or not moved:
            return
        pages = pool.slab[torch.tensor([pool.page_of[b] for b in ids], device=pool.slab.device)]
        row = {b: i for i, b in enumerate(ids)}
        for t, store in moved:
            kept = cache.adopt(t, np.asarray(ids, dtype=np.int64)).tolist()
            send = ids if store is self.shared else kept
            if send:
                rows = pages if len(send) == len(ids) else pages[torch.tensor([row[b] for b in send],
                                                                             device=pages.device)]
                store.put([pool.ids.keys[b] for b in send], rows)

    def flush(self, pool, cache: KVCache) -> None:
        """At shutdown, write the blocks only GPU or DRAM hold to the disk tier (where it has room), so that the
        next engine on the same folder finds them."""
        first = self.first_tier(cache)
        where = cache.where[: cache.n_slots]
        for t, store in self.moved(first):
            if store is self.shared:
                continue
            above = ((where & ((1 << t) - 1)) != 0) & ((where & (1 << t)) == 0)
            ids = cache.adopt(t, np.flatnonzero(above)).tolist()
            on_gpu = [b for b in ids if b in pool.page_of and b not in pool.poisoned]
            if on_gpu:
                pages = pool.slab[torch.tensor([pool.page_of[b] for b in on_gpu], device=pool.slab.device)]
                store.put([pool.ids.keys[b] for b in on_gpu], pages)
            for u, upper in enumerate(self.stores[: t - first], start=first):
                rest = [b for b in ids if b not in pool.page_of and where[b] & (1 << u)]
                if rest:
                    keys = [pool.ids.keys[b] for b in rest]
                    buf = torch.empty(len(rest), store.page_bytes, dtype=torch.uint8)
                    found = upper.get(keys, buf)
                    store.put([k for k, ok in zip(keys, found, strict=True) if ok], buf[torch.from_numpy(found)])

    def close(self, pool, cache: KVCache) -> None:
        """Flush to disk, finish queued offloads, then close the stores (the disk saves its index)."""
        self.flush(pool, cache)
        self.mover.close()
        for s in [*self.stores, *self.window]:
            s.close()
