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

    @property
    def per_sequence(self) -> bool:
        """A decode's keys depend on its own context (a window, chunk, compression or top-k bounds them)."""
        return self.kind != "linear" and not (self.bound == INF and self.top_k == INF and self.ratio == 1)

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


def decode_work(g: GroupCost, contexts: np.ndarray | None, k: int, total: float, queries: int = 1) -> Work:
    """`queries` tokens (1, or a speculative verification's) for each of k decodes: from their summed context
    `total` where every key is seen (full, MLA), else from their contexts (an array, priced in a few vectorised
    operations whatever the batch). A decode's queries share one read of its KV (one query tile) and see about
    its context each; FLOPs and score elements grow with them."""
    if g.kind == "linear":
        return Work(LINEAR_FLOPS_PER_STATE_BYTE * g.state_bytes * k * queries, 2 * g.state_bytes * k,
                    2 * g.state_bytes * k)
    if g.per_sequence:
        assert contexts is not None
        seen = float(_seen(g, contexts).sum())
        raw = float(np.minimum(contexts, g.raw_window).sum()) if g.raw_window else 0.0
    else:
        seen, raw = total, 0.0
    scored = total / g.ratio if g.index_flops else 0.0
    io = seen * g.entry_bytes + raw * g.raw_bytes + scored * g.index_bytes
    return Work(queries * (g.flops_per_pair * (seen + raw) + g.index_flops * scored), io, io,
                queries * g.score_heads * (seen + raw), queries * g.flops_per_pair * k)


def write_bytes_per_token(groups: tuple[GroupCost, ...]) -> float:
    """KV written per new token: every layer's entry (a compressed layer's once per `ratio` tokens, and its raw
    window's), indexer keys included; linear states are counted as attention traffic."""
    return sum((g.entry_bytes + g.index_bytes) / g.ratio + g.raw_bytes for g in groups)
