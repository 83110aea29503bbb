"""DeepSeek-V4's page groups: compressed entries in the pool, the raw window beside it, the compressors' tails.

- The pool's page holds one block of every CSA/HCA layer's compressed entries (`block_size / ratio` K=V
  vectors a layer, as the codec stores a value) and each CSA layer's lightning-indexer keys (fp4 + a 4-byte
  scale, `codecs/fp4.py`): the bytes `kvcache/sizing.py`'s `kv_bytes_per_block` prices, counted and shared by
  the policy core like any page. A block's entries are complete when it is named (its windows have closed).
- Every layer's raw window (one shared K=V vector a token) is a sliding page group (`engine/sliding.py`):
  pages beyond the window released, cached, rewound and written to tiers as Gemma's and gpt-oss's are.
- A compressor's unfinished window (the projections and gates of tokens whose window has not closed, which
  no page holds) lives in a tail per running sequence (`CompressorTails`). Tails are not cached: a prefill that
  starts where its tail does not reach (a prefix hit, a preemption, a reload from a tier) is rewound to the
  latest position from which every compressor rebuilds what it needs (one CSA window back, for its overlap)
  and recomputes from there (a few tokens, not a block), as the sliding group rewinds to a boundary whose window is here. Entries of
  windows that need positions before the restart are not rebuilt: they are in the hit's pages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentkv.codecs import KVCodec, PageField
from agentkv.codecs.fp4 import fp4_field
from agentkv.engine.sequence import EngineSequence, rewind
from agentkv.kernels.attention import LayerKV
from agentkv.kernels.compressed_attention import EntryPages, Tail, TailStep, V4LayerKV
from agentkv.model.deepseek_config import CompressedShape
from agentkv.scheduler import Allocate, StepPlan


@dataclass(slots=True, frozen=True)
class CompressedLayout:
    """The pool's page for V4: every compressed layer's entry fields, then the CSA layers' indexer keys (bytes,
    last, so that the codec's typed fields stay aligned)."""

    codec: KVCodec
    ratios: tuple[int, ...]  # per compressed layer, in model order
    csa: tuple[bool, ...]
    entry_fields: tuple[tuple[PageField, ...], ...]
    index_fields: tuple[PageField, ...]  # one per CSA layer

    @staticmethod
    def of_model(codec: KVCodec, v4: CompressedShape, block_size: int) -> CompressedLayout:
        ratios = tuple(v4.ratio_of(i) for i, k in enumerate(v4.kinds) if k != "sliding")
        bad = sorted({r for r in ratios if block_size % r})
        if bad:
            raise ValueError(f"block size {block_size} (--block-size): DeepSeek-V4 keeps whole compressed entries in "
                             "a page, so the block size must be a multiple of every compression ratio "
                             f"({', '.join(map(str, bad))})")
        csa = tuple(k == "csa" for k in v4.kinds if k != "sliding")
        entries = tuple(codec.value_fields(block_size // r, 1, v4.dim) for r in ratios)
        index = tuple(fp4_field(block_size // r, v4.index_dim) for r, c in zip(ratios, csa, strict=True) if c)
        layout = CompressedLayout(codec, ratios, csa, entries, index)
        widest = max(torch.empty((), dtype=f.dtype).element_size() for fields in entries for f in fields)
        if layout.page_bytes % widest:  # every page's typed views start aligned only if the page size is
            raise ValueError(f"DeepSeek-V4 pages of {layout.page_bytes} bytes do not align the {codec.name} codec's "
                             f"{widest}-byte values: index_head_dim {v4.index_dim} with block_size {block_size}")
        return layout

    @property
    def page_bytes(self) -> int:
        return sum(f.nbytes for fields in self.entry_fields for f in fields) + sum(f.nbytes for f in self.index_fields)

    def views(self, slab: torch.Tensor, group: int = 0) -> list[EntryPages]:
        """Each compressed layer's entry pages over a slab [num_pages, page_bytes] (uint8)."""
        off, n = 0, slab.shape[0]

        def take(f: PageField) -> torch.Tensor:
            nonlocal off
            view = slab[:, off : off + f.nbytes].view(f.dtype).view(n, *f.shape)
            off += f.nbytes
            return view

        data = [{f.name: take(f) for f in fields} for fields in self.entry_fields]
        index = iter([take(f) for f in self.index_fields])
        return [EntryPages(self.codec, d, next(index) if c else None, r)
                for d, c, r in zip(data, self.csa, self.ratios, strict=True)]


def raw_window_fields(codec: KVCodec, v4: CompressedShape, block_size: int) -> tuple[PageField, ...]:
    """One layer's raw window in a sliding page: a shared K=V vector a token, stored as the codec stores a value."""
    return codec.value_fields(block_size, 1, v4.dim)


class CompressorTails:
    """The compressors' unfinished windows of every running sequence (a row each: its backend row), and where
    each row's tail starts and ends."""

    def __init__(self, v4: CompressedShape, max_rows: int, device: torch.device) -> None:
        self.v4 = v4
        self.upto = [-1] * max_rows  # the position each row's tail reaches (-1: nothing yet)
        self.valid_from = [0] * max_rows  # the first position it holds
        self.step = TailStep()
        self.tails: list[tuple[Tail | None, Tail | None]] = []
        for kind in v4.kinds:
            if kind == "sliding":
                self.tails.append((None, None))
                continue
            overlap = kind == "csa"
            ratio = v4.csa_ratio if overlap else v4.hca_ratio
            own = self._tail(max_rows, ratio, 2 * v4.dim if overlap else v4.dim, overlap, device)
            index = self._tail(max_rows, ratio, 2 * v4.index_dim, True, device) if overlap else None
            self.tails.append((own, index))
        self.rewound_tokens = 0  # cached tokens recomputed to rebuild a tail
        priced = max_rows * sum(v4.partial_window_bytes(kind) for kind in v4.kinds)
        assert self.nbytes == priced, f"compressor tails take {self.nbytes} B, sizing prices {priced} B"

    @staticmethod
    def _tail(rows: int, ratio: int, width: int, overlap: bool, device: torch.device) -> Tail:
        span = 2 * ratio if overlap else ratio  # CSA's entry w reads window w - 1 too
        return Tail(torch.zeros(rows, span, width, device=device), torch.zeros(rows, span, width, device=device))

    @property
    def nbytes(self) -> int:
        return sum(2 * t.kv.numel() * t.kv.element_size() for pair in self.tails for t in pair if t is not None)

    def layers(self, raw: list[LayerKV], entries: list[EntryPages]) -> list[V4LayerKV]:
        """Each layer's caches in model order: its raw window, its entries (compressed layers), its tails."""
        pages = iter(entries)
        return [V4LayerKV(r, None if kind == "sliding" else next(pages), own, index, self.step)
                for r, kind, (own, index) in zip(raw, self.v4.kinds, self.tails, strict=True)]

    def restart_at(self, start: int) -> int:
        """The latest position at or before `start` (a block boundary) from which every compressor rebuilds the
        windows that close at or after `start`: CSA's first reads the window before it, HCA's starts there."""
        need = start
        for kind in set(self.v4.kinds) - {"sliding"}:
            ratio = self.v4.csa_ratio if kind == "csa" else self.v4.hca_ratio
            need = min(need, max(0, (start // ratio - (kind == "csa")) * ratio))
        return need

    def before_forward(self, plan: StepPlan) -> None:
        """Admitted rows start empty; a prefill whose tail does not reach its start is rewound (before the
        sliding group checks its window there); then the step's rows and first valid positions."""
        for op in plan.ops:
            if isinstance(op, Allocate) and op.admission:
                self.upto[op.seq.row] = -1  # type: ignore[attr-defined]
        for chunk in plan.prefills:
            seq: EngineSequence = chunk.seq  # type: ignore[assignment]
            if chunk.start and self.upto[seq.row] != chunk.start:
                start = self.restart_at(chunk.start)
                self.rewound_tokens += chunk.start - start
                rewind(chunk, start, chunk.n)

    def begin(self, plan: StepPlan) -> None:
        """After every rewind: a prefill not continuing its tail restarts it at its start; the step's rows."""
        spans = [(c.seq, c.start, c.start + c.n, True) for c in plan.prefills]
        spans += [(s, s.computed, s.computed + 1, False) for s in plan.decodes]
        self.step.rows, self.step.valid_from = [], []
        for seq, start, end, prefill in spans:
            row = seq.row  # type: ignore[union-attr]
            if self.upto[row] != start:  # only a prefill can restart (before_forward rewound it to where it may)
                assert prefill, f"request {seq.request_id}: a decode at {start}, its tail at {self.upto[row]}"  # type: ignore[union-attr]
                self.valid_from[row] = start
            self.upto[row] = end
            self.step.rows.append(row)
            self.step.valid_from.append(self.valid_from[row])
