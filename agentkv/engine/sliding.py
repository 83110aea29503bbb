"""The sliding-window (or chunked) layers' pages: a second page group beside the pool's, holding only what a
window (or the current chunk) needs.

A model with sliding layers (Gemma 3, gpt-oss) or chunked ones (Llama 4) keeps two kinds of page. The pool's pages (`pool.py`, counted
by the policy core) hold one block of the full layers, as `kvcache/sizing.py`'s `kv_bytes_per_block` prices
them; the pages here hold one block of the sliding layers, and a running sequence keeps only those its next
queries can see (positions after computed - window): older ones are released as it goes, as vLLM's hybrid
allocator and SGLang's SWA pool release them, so a running sequence holds what `sizing.state_bytes` prices
(its window), not its whole context.

A released page whose block is named stays cached (least recently released evicted first): a prefix hit at
block boundary B needs only the window's pages before B. Where the core grants a hit whose window pages are
gone, the prefill rewinds to the last block boundary whose window is all here (block 0 at worst) and
recomputes from it. This group is engine-side, as the simulator models it: its bytes are carved from the KV
budget up front (every running sequence's window, and as much again for cached windows where half the
budget allows), not counted by the core.

With disk or Redis tiers, every named page is written through to stores of its own beside theirs
(`Tiering.window_stores`), and a hit whose window pages are gone here reads them back before it would rewind:
an engine restarted on a disk folder or a Redis server hits a sliding model's prefixes, as a full one's.

Page 0 is never handed out: released entries of a block table keep pointing at whatever page they named,
which the window's mask hides (stale but finite values), so tables never need rewriting.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from agentkv.engine.pages import PageLayout
from agentkv.engine.sequence import EngineSequence, rewind
from agentkv.kernels.attention import AttentionBackend, AttentionMetadata, SeqSlice
from agentkv.kvcache.ids import BlockIds
from agentkv.scheduler import Allocate, Free, Name, Op, StepPlan
from agentkv.scheduler.plan import PrefillChunk
from agentkv.storage.base import BlockKey, TierStore


class SlidingPages:
    def __init__(self, layout: PageLayout, num_pages: int, window: int, block_size: int, device: torch.device,
                 backend: AttentionBackend, ids: BlockIds, chunked: bool = False) -> None:
        """window: the sliding layers' window, or with `chunked` the chunk their queries attend within."""
        self.layout, self.window, self.bs, self.ids, self.chunked = layout, window, block_size, ids, chunked
        self.backend = backend  # its own block tables: one row per running sequence, as the pool's
        self.slab = torch.zeros(num_pages, layout.page_bytes, dtype=torch.uint8, device=device)
        self.layers = layout.views(self.slab, group=1)
        self.free = list(range(num_pages - 1, 0, -1))
        # named pages by block key, not id: the engine recycles the ids of blocks the core forgot, and a key
        # stands for one block's tokens and everything before them, whatever id it has today
        self.page_of: dict[BlockKey, int] = {}
        self.key_at: list[BlockKey | None] = [None] * num_pages
        self.refs = np.zeros(num_pages, dtype=np.int64)  # running sequences holding each page
        self.idle: OrderedDict[int, None] = OrderedDict()  # named pages none holds, least recently released first
        self.rewound_tokens = 0  # cached tokens recomputed because their window's pages were gone
        self.stores: list[TierStore] = []  # disk / Redis stores of window pages (tiering.window_stores)
        self.restored = 0  # window pages read back from those stores

    @staticmethod
    def floor(max_seqs: int, max_batched_tokens: int, window: int, block_size: int) -> int:
        """Pages every running sequence's window (a partial block at each end), one step's new blocks and the
        null page take at most."""
        return max_seqs * (-(-(window - 1) // block_size) + 2) + -(-max_batched_tokens // block_size) + 1

    @staticmethod
    def pages_for(kv_bytes: int, page_bytes: int, max_seqs: int, max_batched_tokens: int, window: int,
                  block_size: int) -> int:
        """The floor at least; as much again to keep released windows cached, within half the KV budget."""
        held = SlidingPages.floor(max_seqs, max_batched_tokens, window, block_size)
        if held * page_bytes > kv_bytes:
            raise ValueError(f"the sliding windows of max_num_seqs={max_seqs} sequences need {held * page_bytes} "
                             f"bytes of the {kv_bytes}-byte KV budget: lower max_num_seqs or give more KV memory")
        return min(2 * held, max(held, kv_bytes // 2 // page_bytes))

    @property
    def nbytes(self) -> int:
        return self.slab.shape[0] * self.layout.page_bytes

    # ---- the plan's operations, after the pool's --------------------------------------------------------------
    def execute(self, ops: list[Op]) -> None:
        for op in ops:
            seq: EngineSequence = getattr(op, "seq", None)  # type: ignore[assignment]
            if isinstance(op, Allocate) and op.admission:  # its row (the pool's) may be another's old one
                self.backend.release_row(seq.row)
                seq.window_pages = [self.page_of.get(self.ids.keys[b], 0) for b in op.hits.tolist()]  # type: ignore[arg-type]
                for p in seq.window_pages:
                    if p:
                        self._pin(p)
            elif isinstance(op, Name):
                named = []
                for i, b in enumerate(op.ids.tolist()):
                    p = seq.window_pages[op.first + i] if op.first + i < len(seq.window_pages) else 0
                    key = self.ids.keys[b]
                    if p and key not in self.page_of and self.key_at[p] is None:
                        self.page_of[key], self.key_at[p] = p, key  # type: ignore[index]
                        named.append(p)
                self._write_through(named)
            elif isinstance(op, Free):
                for p in seq.window_pages:
                    if p:
                        self._unpin(p)
                seq.window_pages = []

    def before_forward(self, plan: StepPlan, running: list[EngineSequence]) -> None:
        """Rewind prefills whose window is gone, release what no query will see, give the step's blocks pages."""
        for chunk in plan.prefills:
            self._rewind_if_missing(chunk)
        for seq in running:
            first = self.first_seen(seq.computed) // self.bs
            for b in range(min(first, len(seq.window_pages))):
                if seq.window_pages[b]:
                    self._unpin(seq.window_pages[b])
                    seq.window_pages[b] = 0
        spans = [(c.seq, c.start, c.start + c.n) for c in plan.prefills]
        spans += [(s, s.computed, s.computed + 1) for s in plan.decodes]
        for seq, start, end in spans:
            pages = seq.window_pages  # type: ignore[union-attr]
            pages += [0] * (-(-end // self.bs) - len(pages))
            for b in range(start // self.bs, len(pages)):
                if not pages[b]:
                    pages[b] = self._take()

    def prepare(self, plan: StepPlan) -> AttentionMetadata:
        slices = [SeqSlice(c.seq.row, c.seq.window_pages, c.n, c.start + c.n) for c in plan.prefills]  # type: ignore[attr-defined]
        slices += [SeqSlice(s.row, s.window_pages, 1, s.computed + 1) for s in plan.decodes]  # type: ignore[attr-defined]
        return self.backend.prepare(slices, len(plan.prefills), self.bs)

    # ---- mechanics ----------------------------------------------------------------------------------------------
    def _rewind_if_missing(self, chunk: PrefillChunk) -> None:
        """A prefill starting at q reads the window's keys before q: where one of their pages is gone, it
        starts again from the last block boundary whose window is all here."""
        seq: EngineSequence = chunk.seq  # type: ignore[assignment]
        pages = seq.window_pages

        def whole(start: int) -> bool:
            return all(b < len(pages) and pages[b] for b in range(self.first_seen(start) // self.bs,
                                                                     -(-start // self.bs)))

        if whole(chunk.start):
            return
        self._restore(seq, range(self.first_seen(chunk.start) // self.bs, -(-chunk.start // self.bs)))
        if whole(chunk.start):
            return
        start = next(b * self.bs for b in range(chunk.start // self.bs, -1, -1) if whole(b * self.bs))
        self.rewound_tokens += chunk.start - start
        rewind(chunk, start, chunk.n)  # as many tokens as planned: the step's budget holds

    def _write_through(self, pages: list[int]) -> None:
        """Newly named window pages go to the disk and Redis stores too (the mover snapshots them), so that an
        engine restarted on those tiers, or this one once they left here, finds a hit's window."""
        if pages and self.stores:
            rows = self.slab[torch.tensor(pages, device=self.slab.device)]
            keys = [self.key_at[p] for p in pages]
            for store in self.stores:
                store.put(keys, rows)  # type: ignore[arg-type]

    def _restore(self, seq: EngineSequence, blocks: range) -> None:
        """The window pages a prefill needs that are gone from here, read back from the stores where they are."""
        pages = seq.window_pages
        pages += [0] * (blocks.stop - len(pages))
        missing = [b for b in blocks if not pages[b] and b < len(seq.named)]
        if not missing or not self.stores:
            return
        keys = [self.ids.keys[seq.named[b]] for b in missing]
        found = np.zeros(len(keys), dtype=bool)
        rows = torch.empty(len(keys), self.layout.page_bytes, dtype=torch.uint8)
        for store in self.stores:
            rest = np.flatnonzero(~found)
            if not len(rest):
                break
            buf = torch.empty(len(rest), self.layout.page_bytes, dtype=torch.uint8)
            got = store.get([keys[i] for i in rest], buf)
            rows[torch.from_numpy(rest[got])] = buf[torch.from_numpy(got)]
            found[rest[got]] = True
        for i in np.flatnonzero(found).tolist():
            key, b = keys[i], missing[i]
            if key in self.page_of:  # another sequence brought it back meanwhile
                pages[b] = self.page_of[key]
                self._pin(pages[b])
                continue
            pages[b] = self._take()
            self.slab[pages[b]] = rows[i].to(self.slab.device)
            self.page_of[key], self.key_at[pages[b]] = pages[b], key
            self.restored += 1

    def first_seen(self, position: int) -> int:
        """The first key position a query at `position` sees: its window's, or its chunk's start."""
        if self.chunked:
            return position // self.window * self.window
        return max(0, position - self.window + 1)

    def _take(self) -> int:
        if self.free:
            page = self.free.pop()
        elif self.idle:
            page, _ = self.idle.popitem(last=False)
            del self.page_of[self.key_at[page]]  # type: ignore[arg-type]
            self.key_at[page] = None
        else:  # pages_needed covers every running window: only a sizing bug gets here
            raise RuntimeError("sliding-window pages exhausted")
        self.refs[page] = 1
        return page

    def _pin(self, page: int) -> None:
        self.idle.pop(page, None)
        self.refs[page] += 1

    def _unpin(self, page: int) -> None:
        self.refs[page] -= 1
        if self.refs[page] == 0:
            if self.key_at[page] is not None:
                self.idle[page] = None
            else:
                self.free.append(page)

    def check(self, running: list[EngineSequence]) -> None:
        """Every page is free, idle (named, cached) or held, exactly once; pins match the running sequences."""
        refs = np.zeros_like(self.refs)
        for s in running:
            for p in s.window_pages:
                refs[p] += 1 if p else 0
        assert np.array_equal(refs, self.refs), "sliding pages: pins disagree with running sequences"
        held = set(np.flatnonzero(refs).tolist())
        assert not held & set(self.free) and not held & set(self.idle), "a held sliding page is free or idle"
        assert len(self.free) + len(self.idle) + len(held) == self.slab.shape[0] - 1, "sliding pages lost"
        assert all(self.page_of[self.key_at[p]] == p for p in self.idle), "an idle page lost its name"  # type: ignore[index]
