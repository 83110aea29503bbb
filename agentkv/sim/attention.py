"""Attention work of a step, layer kind by layer kind, from the model's per-layer description.

A query at position x (x tokens visible, itself included) attends to x keys in a full or MLA layer, min(x, W)
in a sliding one, the tokens of its own chunk in a chunked one, and in a compressed layer to its raw window
plus one entry per `ratio` tokens; a sparse layer (top-k) to at most k entries, after an indexer scored them
all. A linear layer reads and updates a state of fixed size instead. Prefill chunks sum these in closed form,
so pricing a step costs a few operations per layer group, not per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from agentkv.catalog import LayerGroup, ModelSpec
from agentkv.kvcache.sizing import CodecSpec, entry_bytes, index_bytes, raw_bytes

INF = math.inf
LINEAR_FLOPS_PER_STATE_BYTE = 3.0  # decay, rank-1 update and read-out: ~6 FLOPs per 2-byte state value (estimate)
CHUNKS_KEPT = 1 << 15  # prompt chunks whose attention work a deployment remembers: see chunk_work


@dataclass(slots=True, frozen=True)
class GroupCost:
    """One layer group's constants for pricing, all layers of the group together, across the tp ranks."""

    kind: str
    bound: float  # keys a query sees at most: the window or chunk (INF: the whole context)
    ratio: int
    top_k: float  # entries a query attends to at most (INF: dense)
    flops_per_pair: float  # QK^T and PV over every query head (MLA: absorbed, in the latent space, as decode runs)
    prefill_flops_per_pair: float  # the same in prefill (MLA: heads expanded from the latent, as prefill runs)
    entry_bytes: float  # per entry attended
    raw_window: float  # compressed: raw recent tokens attended beside the entries
    raw_bytes: float
    index_flops: float  # per (query, entry) the indexer scores
    index_bytes: float
    state_bytes: float  # linear: per sequence
    score_heads: float  # layers × heads: the score matrices naive attention writes

    @staticmethod
    def of(g: LayerGroup, m: ModelSpec, codec: CodecSpec, block_size: int, tp: int) -> GroupCost:
        bounded = g.kind in ("sliding", "chunked")
        entry = 0.0 if g.kind == "linear" else entry_bytes(g, m, codec, block_size, tp) - index_bytes(g, tp)
        return GroupCost(
            kind=g.kind, bound=g.window if bounded else INF, ratio=g.ratio, top_k=g.top_k or INF,
            flops_per_pair=g.flops_per_pair(m), prefill_flops_per_pair=g.prefill_flops_per_pair(m),
            entry_bytes=g.layers * entry,
            raw_window=g.window if g.kind == "compressed" else 0,
            raw_bytes=g.layers * raw_bytes(g, m, codec, block_size, tp) if g.kind == "compressed" else 0.0,
            index_flops=2.0 * g.layers * g.index_heads * g.index_dim, index_bytes=g.layers * index_bytes(g, tp),
            state_bytes=g.layers * g.state_bytes, score_heads=0.0 if g.kind == "linear" else g.layers * m.heads)


def group_costs(m: ModelSpec, codec: CodecSpec, block_size: int, tp: int) -> tuple[GroupCost, ...]:
    return tuple(GroupCost.of(g, m, codec, block_size, tp) for g in m.groups)


@dataclass(slots=True)
class Work:
    """Attention work summed over a step's sequences: FLOPs, HBM bytes an IO-aware kernel reads, bytes a naive
    one reads (whole contexts once), its score-matrix elements, and the FLOPs per key of every query row (a
    kernel's fixed work per query is priced as a number of keys: `Coefficients.attention_overhead_keys`)."""

    flops: float = 0.0
    io_bytes: float = 0.0
    naive_bytes: float = 0.0
    scores: float = 0.0
    query_flops: float = 0.0

    def add(self, other: Work) -> None:
        self.flops += other.flops
        self.io_bytes += other.io_bytes
        self.naive_bytes += other.naive_bytes
        self.scores += other.scores
        self.query_flops += other.query_flops


def sum_min(a: float, b: float, w: float) -> float:
    """Σ min(x, w) for x = a+1 .. b: keys seen by the queries of a chunk at positions a..b-1 under a bound w."""
    if b <= a:
        return 0.0
    if w >= b:
        return (b * (b + 1) - a * (a + 1)) / 2
    if w <= a + 1:
        return (b - a) * w
    return (w * (w + 1) - a * (a + 1)) / 2 + (b - w) * w


def _chunk_prefix(p: float, c: float) -> float:
    """Σ over the first p positions of the tokens each sees inside its chunk of c."""
    full, r = divmod(p, c)
    return full * c * (c + 1) / 2 + r * (r + 1) / 2


def _seen(g: GroupCost, x: Any) -> Any:
    """Entries (keys, compressed entries) a query at x visible tokens attends to, raw window aside: for one
    context (a float: plain arithmetic) or elementwise for an array of them (a step's decodes, vectorised)."""
    many = isinstance(x, np.ndarray)
    if g.kind == "chunked":
        return np.where(x > 0, (x - 1) % g.bound + 1, 0.0) if many else (x - 1) % g.bound + 1 if x > 0 else 0.0
    low = np.minimum if many else min
    return low(low(x / g.ratio, g.bound), g.top_k)


def _pairs(g: GroupCost, s: float, n: float) -> float:
    """Σ entries seen by the queries of a chunk of n tokens after s cached ones."""
    if g.kind == "chunked":
        return _chunk_prefix(s + n, g.bound) - _chunk_prefix(s, g.bound)
    return sum_min(s, s + n, min(g.bound, g.top_k * g.ratio)) / g.ratio


def prefill_work(g: GroupCost, s: int, n: int, tile: int) -> Work:
    """A prefill chunk of n tokens after s (a step holds a few: plain arithmetic): IO-aware kernels read what
    each tile of `tile` queries needs once per tile; a sparse layer gathers each query's top-k entries itself."""
    if g.kind == "linear":  # chunked scan: the state read and written once, state FLOPs per token
        return Work(LINEAR_FLOPS_PER_STATE_BYTE * g.state_bytes * n, 2 * g.state_bytes, 2 * g.state_bytes)
    pairs = _pairs(g, s, n)
    raw = sum_min(s, s + n, g.raw_window) if g.raw_window else 0.0
    scored = (s * n + n * (n + 1) / 2) / g.ratio if g.index_flops else 0.0
    tiles, mean = math.ceil(n / tile), s + (n + tile) / 2
    reads = n * _seen(g, mean) if g.top_k < INF else tiles * min(mean / g.ratio, g.bound + tile)
    io = (reads * g.entry_bytes + tiles * min(mean, g.raw_window + tile) * g.raw_bytes
          + tiles * mean / g.ratio * g.index_bytes)
    end = s + n
    naive = (_seen(g, end) * g.entry_bytes + min(end, g.raw_window) * g.raw_bytes
             + end / g.ratio * g.index_bytes)
    return Work(g.prefill_flops_per_pair * (pairs + raw) + g.index_flops * scored, io, naive,
                g.score_heads * (pairs + raw), g.prefill_flops_per_pair * n)


def chunk_work(n: int, start: int, groups: tuple[GroupCost, ...], tile: int, memo: dict[tuple, Work]) -> Work:
    """A prompt chunk's attention work over every layer group, remembered in `memo` by (n, start): a step beside
    decodes is priced whole every time, but its chunk recurs (a prompt's chunks after 0, 8192, ... less the
    decodes' tokens). The memo starts over at CHUNKS_KEPT entries (~4 MB)."""
    work = memo.get((n, start))
    if work is None:
        if len(memo) >= CHUNKS_KEPT:
            memo.clear()
        work = memo[(n, start)] = Work()
        for g in groups:
            work.add(prefill_work(g, start, n, tile))
    return work


class DecodeTable:
    """Every layer group's decode work as one linear map, built once per deployment, so a step's decodes are
    priced in a few vectorised operations whatever the batch and however many groups the model has. A decode at
    context x sees min(x, cap) / ratio entries of a group whose window, chunk or top-k caps it (x / ratio where
    nothing does), min(x, window) raw keys of a compressed group, ((x - 1) mod W) + 1 keys of a chunked one, and
    its indexer scores x / ratio entries; a linear group updates a fixed state. So each Work field is a sum over
    columns of Σ min(x, cap) over the decodes (one column per distinct cap), Σ chunk position (one per chunk
    size), Σ x and the number of decodes, times constants (`coef`). A decode's queries (1, or a speculative
    verification's) share one read of its KV (one query tile); FLOPs and score elements grow with them."""

    __slots__ = ("caps", "chunks", "coef", "per_sum")

    def __init__(self, groups: tuple[GroupCost, ...]) -> None:
        caps = sorted({c for g in groups for c in _caps(g)})
        chunks = sorted({g.bound for g in groups if g.kind == "chunked"})
        columns = [*(("cap", c) for c in caps), *(("chunk", w) for w in chunks), ("total", 0), ("k", 0)]
        where = {col: i for i, col in enumerate(columns)}
        coef = np.zeros((5, len(columns)))  # rows: flops, io_bytes, naive_bytes, scores, query_flops
        for g in groups:
            for column, weight, row in _terms(g):
                coef[:, where[column]] += weight * np.asarray(row)
        self.caps = np.array(caps, dtype=float)[:, None]
        self.chunks = np.array(chunks, dtype=float)[:, None]
        self.coef = coef
        self.per_sum = [(float(a), float(b)) for a, b in coef[:, -2:]]  # (per Σ x, per decode), each field

    @property
    def needs_contexts(self) -> bool:
        """Some group bounds what a decode sees: the contexts one by one, not only their sum."""
        return bool(len(self.caps) or len(self.chunks))

    def work(self, contexts: np.ndarray | None, k: int, total: float, queries: int = 1) -> Work:
        """The decodes' work: `contexts` (an array) where `needs_contexts`, else only their count and sum."""
        if contexts is None:  # plain Python: a few numbers, no array worth building
            flops, io, naive, scores, query_flops = (a * total + b * k for a, b in self.per_sum)
        else:
            parts = [np.minimum(contexts, self.caps).sum(axis=1)] if len(self.caps) else []
            if len(self.chunks):
                parts.append(np.where(contexts > 0, (contexts - 1) % self.chunks + 1, 0.0).sum(axis=1))
            flops, io, naive, scores, query_flops = (self.coef @ np.concatenate([*parts, (total, k)])).tolist()
        return Work(queries * flops, io, naive, queries * scores, queries * query_flops)


def _caps(g: GroupCost) -> list[float]:
    """The caps on a decode's context a group's work sums over (see DecodeTable)."""
    if g.kind in ("linear", "chunked"):
        return []
    seen = g.ratio * min(g.bound, g.top_k)
    return [c for c in (seen, g.raw_window or INF) if c < INF]


def _terms(g: GroupCost) -> list[tuple[tuple[str, float], float, tuple[float, ...]]]:
    """(column, weight, per-field constants) of a group's decode work (see DecodeTable)."""
    if g.kind == "linear":
        return [(("k", 0), 1.0, (LINEAR_FLOPS_PER_STATE_BYTE * g.state_bytes, 2 * g.state_bytes,
                                 2 * g.state_bytes, 0.0, 0.0))]
    key = (g.flops_per_pair, g.entry_bytes, g.entry_bytes, g.score_heads, 0.0)
    if g.kind == "chunked":
        seen = (("chunk", g.bound), 1.0)
    else:
        cap = g.ratio * min(g.bound, g.top_k)
        seen = (("cap", cap) if cap < INF else ("total", 0), 1.0 / g.ratio)
    terms = [(*seen, key), (("k", 0), 1.0, (0.0, 0.0, 0.0, 0.0, g.flops_per_pair))]
    if g.raw_window:
        terms.append((("cap", g.raw_window), 1.0, (g.flops_per_pair, g.raw_bytes, g.raw_bytes, g.score_heads, 0.0)))
    if g.index_flops:
        terms.append((("total", 0), 1.0 / g.ratio, (g.index_flops, g.index_bytes, g.index_bytes, 0.0, 0.0)))
    return terms


def write_bytes_per_token(groups: tuple[GroupCost, ...]) -> float:
    """KV written per new token: every layer's entry (a compressed layer's once per `ratio` tokens, and its raw
    window's), indexer keys included; linear states are counted as attention traffic."""
    return sum((g.entry_bytes + g.index_bytes) / g.ratio + g.raw_bytes for g in groups)
