"""Physical KV pages, moved exactly as the plan says: the only code that touches them.

One owner per fact:
- the policy core owns which block ids exist in which tier, their pins and the capacity accounts;
- this pool owns the device pages, the free list and the map id → page for named blocks resident in tier 0;
- a sequence owns its block table (`pages`) and the ids it names; `BlockIds` owns what each id stands for;
- each lower tier's `TierStore` owns its bytes (the host slab, disk, Redis), keyed by the block's `BlockKey`.

Invariants (`check` verifies them against the core after every step in tests):
- pages in use = the core's tier-0 blocks (resident + reserved for running requests), and none is lost:
  free + named + anonymous pages held by running sequences = num_pages;
- the ids resident in tier 0 by the core's accounts are exactly those mapped to a page here, and each
  lower tier's store holds exactly the ids the core places there;
- a running sequence's table covers the blocks the core holds for it, its cached prefix mapped to the
  pages of those ids.
"""

from __future__ import annotations

import numpy as np
import torch

from agentkv.engine.pages import PageLayout
from agentkv.engine.sequence import EngineSequence
from agentkv.kernels.attention import AttentionBackend
from agentkv.kvcache.cache import KVCache, MoveBatch
from agentkv.kvcache.ids import BlockIds
from agentkv.scheduler import Allocate, Free, Name, Op
from agentkv.storage.base import BlockKey, TierStore


class PagePool:
    def __init__(self, layout: PageLayout, num_pages: int, device: torch.device, ids: BlockIds,
                 stores: list[TierStore], backend: AttentionBackend, max_rows: int) -> None:
        """stores[t - 1] keeps tier t's pages; a running sequence gets one of `max_rows` rows in the backend's
        block-table tensor."""
        self.backend = backend
        self.rows = list(range(max_rows - 1, -1, -1))
        self.layout = layout
        self.slab = torch.zeros(num_pages, layout.page_bytes, dtype=torch.uint8, device=device)
        self.layers = layout.views(self.slab)
        self.ids = ids
        self.stores = stores
        self.free = list(range(num_pages - 1, -1, -1))
        self.page_of: dict[int, int] = {}  # named block id -> its page
        self.id_at = np.full(num_pages, -1, dtype=np.int64)  # page -> named block id (-1: anonymous or free)
        self.gone: list[int] = []  # ids a drop took out of some tier: the engine may recycle them
        self.lost: list[tuple[int, list[int]]] = []  # (tier, ids) a promotion failed to load: the engine repairs
        self.poisoned: set[int] = set()  # resident ids whose page holds no valid KV until recomputed

    @property
    def num_pages(self) -> int:
        return self.slab.shape[0]

    def execute(self, ops: list[Op]) -> None:
        for op in ops:
            if isinstance(op, MoveBatch):
                self._move(op)
            elif isinstance(op, Allocate):
                seq: EngineSequence = op.seq  # type: ignore[assignment]
                seq.pages += [self.page_of[b] for b in op.hits.tolist()] + [self.free.pop() for _ in range(op.n)]
                if seq.row < 0:
                    seq.row = self.rows.pop()
            elif isinstance(op, Name):
                seq = op.seq  # type: ignore[assignment]
                for i, b in enumerate(op.ids.tolist()):
                    if b not in self.page_of:  # else another request wrote it meanwhile: ours stays anonymous
                        self._name(seq.pages[op.first + i], b)
            elif isinstance(op, Free):
                seq = op.seq  # type: ignore[assignment]
                self.free += [p for p in seq.pages if self.id_at[p] < 0]
                seq.pages = []
                if seq.row >= 0:
                    self.backend.release_row(seq.row)
                    self.rows.append(seq.row)
                    seq.row = -1

    # ---- tier moves -------------------------------------------------------------------------------------------
    def _move(self, mv: MoveBatch) -> None:
        ids = mv.blocks.tolist()
        if not ids:
            return
        keys = self._keys(ids)
        if mv.kind == "promote":
            pages = [self.free.pop() for _ in ids]
            staged = torch.empty(len(ids), self.layout.page_bytes, dtype=torch.uint8, device=self.slab.device)
            found = self.stores[mv.src - 1].get(keys, staged)
            if not found.all():  # corrupted, evicted or unreachable: the engine recomputes (see tiering.py)
                missing = [b for b, ok in zip(ids, found, strict=True) if not ok]
                self.lost.append((mv.src, missing))
                self.poisoned.update(missing)
            self.slab[torch.tensor(pages, device=self.slab.device)] = staged
            for p, b in zip(pages, ids, strict=True):
                self._name(p, b)
        elif mv.kind in ("demote", "write"):
            pages, ok = self._read(mv.src, ids, keys)
            keep = [i for i, b in enumerate(ids) if ok[i] and b not in self.poisoned]  # never store garbage
            if keep:
                self.stores[mv.dst - 1].put([keys[i] for i in keep], pages[keep])
            if len(keep) < len(ids):  # the core placed them in dst: it must forget them there
                self.lost.append((mv.dst, sorted(set(ids) - {ids[i] for i in keep})))
            if mv.kind == "demote":
                self._drop(mv.src, ids, keys)
        else:
            self._drop(mv.src, ids, keys)
            self.gone += ids

    def _read(self, tier: int, ids: list[int], keys: list[BlockKey]) -> tuple[torch.Tensor, np.ndarray]:
        if tier == 0:
            pages = self.slab[torch.tensor([self.page_of[b] for b in ids], device=self.slab.device)]
            return pages, np.ones(len(ids), dtype=bool)
        out = torch.empty(len(ids), self.layout.page_bytes, dtype=torch.uint8)
        return out, self.stores[tier - 1].get(keys, out)

    def _drop(self, tier: int, ids: list[int], keys: list[BlockKey]) -> None:
        if tier > 0:
            self.stores[tier - 1].drop(keys)
            return
        for b in ids:
            page = self.page_of.pop(b)
            self.id_at[page] = -1
            self.free.append(page)
            self.poisoned.discard(b)

    def _keys(self, ids: list[int]) -> list[BlockKey]:
        return [self.ids.keys[b] for b in ids]  # type: ignore[misc]

    def _name(self, page: int, block_id: int) -> None:
        self.page_of[block_id] = page
        self.id_at[page] = block_id

    # ---- invariants -------------------------------------------------------------------------------------------
    def check(self, cache: KVCache, running: list[EngineSequence]) -> None:
        """Compare the core's accounts with the pages; raises AssertionError naming the first disagreement."""
        resident = set(np.flatnonzero(cache.where[: cache.n_slots] & 1).tolist())
        assert resident == set(self.page_of), (f"core tier 0 holds {len(resident)} ids, pool maps "
                                               f"{len(self.page_of)}: {sorted(resident ^ set(self.page_of))[:8]}")
        anonymous = {p for s in running for p in s.pages if self.id_at[p] < 0}
        assert len(self.free) + len(self.page_of) + len(anonymous) == self.num_pages, "pages lost or double-held"
        assert len(set(self.free)) == len(self.free) and not anonymous & set(self.free), "a held page is free"
        assert cache.free_blocks(0) == len(self.free), (f"core says {cache.free_blocks(0)} free blocks, "
                                                        f"pool has {len(self.free)}")
        pins = np.zeros(cache.n_slots, dtype=np.int64)
        for s in running:
            assert len(s.pages) == s.blocks_held, f"request {s.request_id}: {len(s.pages)} pages, core holds {s.blocks_held}"
            named = s.named[: s.committed]
            np.add.at(pins, np.asarray(named, dtype=np.int64), 1)
            for i, b in enumerate(named):
                assert b not in self.page_of or self.page_of[b] == s.pages[i] or self.id_at[s.pages[i]] < 0, \
                    f"request {s.request_id} block {i} reads another block's page"
        assert np.array_equal(pins, cache.pins[: cache.n_slots]), "pins disagree with running requests"
        for t, store in enumerate(self.stores, start=1):
            if store.may_lose:  # disk and Redis may drop blocks on their own: a load then misses, verified
                continue
            held = np.flatnonzero(cache.where[: cache.n_slots] & (1 << t))
            assert store.contains(self._keys(held.tolist())).all(), f"tier {t} lost blocks the core placed there"
