"""DeepSeek-V4's attention over pages, in torch (the reference; the Triton backend refuses V4): each query sees
its layer's raw window (one shared K=V vector a token, in the sliding page group) and, on a compressed layer,
the compressed entries whose windows have closed (in the pool's pages), a CSA layer only those its indexer
picks; a sink logit per head joins every softmax.

What a layer holds (`V4LayerKV`): its raw-window pages, its entries' pages, and the tails of its compressors'
unfinished windows (engine/compressed.py owns them), with the step's rows and first valid positions
(`TailStep`, shared by every layer and filled by the engine before each step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from agentkv.codecs import KVCodec
from agentkv.codecs.fp4 import fp4_decode, fp4_encode
from agentkv.kernels.attention import AttentionMetadata, LayerKV


@dataclass(slots=True)
class EntryPages:
    """One compressed layer's entries in the pool's pages: `per_page` K=V vectors a page (codec fields
    [num_pages, per_page, 1, dim]) and, on a CSA layer, its indexer's fp4 keys [num_pages, per_page, bytes]."""

    codec: KVCodec
    data: dict[str, torch.Tensor]
    index: torch.Tensor | None
    ratio: int

    @property
    def per_page(self) -> int:
        return next(iter(self.data.values())).shape[1]

    def write(self, tables: torch.Tensor, windows: torch.Tensor, entries: torch.Tensor,
              keys: torch.Tensor | None) -> None:
        """Store entries [n, dim] of windows [n] (and a CSA layer's indexer keys [n, index_dim]), each in the
        page its block table row (tables [n, width]) gives for its window."""
        pp = self.per_page
        slots = tables.gather(1, (windows // pp)[:, None])[:, 0].long() * pp + windows % pp
        self.codec.encode_into(self.data, slots, entries[:, None])
        if keys is not None and self.index is not None:
            self.index[slots // pp, slots % pp] = fp4_encode(keys)

    def read(self, tables: torch.Tensor, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first n entries [B, n, dim] of B sequences' block tables [B, width] and their indexer keys
        [B, n, index_dim] (None on an HCA layer); a sequence with fewer reads stale values past its own."""
        pages = tables[:, : -(-n // self.per_page)].long()
        decoded = self.codec.decode(self.data, pages.flatten(), dtype)
        entries = decoded.view(pages.shape[0], -1, decoded.shape[-1])[:, :n]
        keys = None if self.index is None else fp4_decode(self.index[pages].flatten(1, 2)[:, :n])
        return entries, keys


@dataclass(slots=True)
class Tail:
    """One compressor's unfinished windows, per running sequence (its backend row): the projections and gates
    of its last `span` positions, position p at row p % span (fp32, as the compressor computes them)."""

    kv: torch.Tensor  # [max_rows, span, width]
    gate: torch.Tensor

    @property
    def span(self) -> int:
        return self.kv.shape[1]


@dataclass(slots=True)
class TailStep:
    """This step's sequences in the metadata's order: their rows and the first position their tails hold
    (a sequence restarted at a hit holds nothing before it: entries needing older positions are in its pages)."""

    rows: list[int] = field(default_factory=list)
    valid_from: list[int] = field(default_factory=list)


@dataclass(slots=True)
class V4LayerKV:
    raw: LayerKV  # the raw window (page group 1)
    entries: EntryPages | None  # None: a sliding layer
    tail: Tail | None
    index_tail: Tail | None  # a CSA layer's indexer compressor
    step: TailStep


def read_window(raw: LayerKV, tables: torch.Tensor, blocks: torch.Tensor,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw keys of blocks [B, nb] (by block index; below 0: none, read as position < 0) of B sequences' block
    tables [B, width]: [B, nb * block_size, dim], and their positions [B, nb * block_size]."""
    bs = raw.block_size
    pages = tables.gather(1, blocks.clamp(min=0)).long()
    decoded = raw.codec.decode(raw.k, pages.flatten(), dtype)
    where = blocks[..., None] * bs + torch.arange(bs, device=blocks.device)
    return decoded.view(blocks.shape[0], -1, decoded.shape[-1]), where.flatten(1)


def attend(q: torch.Tensor, sinks: torch.Tensor, scale: float, keys: torch.Tensor, visible: torch.Tensor,
           own: torch.Tensor | None = None, own_seen: torch.Tensor | None = None) -> torch.Tensor:
    """q [L, heads, dim] over shared K=V keys [K, dim] where visible [L, K], and over each query's own keys
    own [L, k, dim] where own_seen [L, k] (a CSA query's gathered top k; a decode's whole context); each head's
    sink logit joins the softmax's denominator (a key of value 0)."""
    parts = [(torch.einsum("thd,sd->hts", q, keys) * scale).masked_fill(~visible, float("-inf"))]
    if own is not None and own_seen is not None:
        parts.append((torch.einsum("thd,tkd->htk", q, own) * scale).masked_fill(~own_seen, float("-inf")))
    sink = sinks.to(parts[0].dtype)[:, None, None].expand(-1, q.shape[0], 1)
    probs = torch.cat([*parts, sink], dim=-1).softmax(dim=-1).to(keys.dtype)
    out = torch.einsum("hts,sd->thd", probs[..., : keys.shape[0]], keys)
    if own is not None:
        out = out + torch.einsum("htk,tkd->thd", probs[..., keys.shape[0] : -1], own)
    return out


def spans(meta: AttentionMetadata) -> list[tuple[int, int, int, int]]:
    """Each sequence of the step: (its first row in the flattened batch, one past its last, its first new
    position, its context after the step)."""
    qsl, lens = meta.query_start_loc_host, meta.seq_lens_host
    return [(qsl[i], qsl[i + 1], lens[i] - (qsl[i + 1] - qsl[i]), lens[i]) for i in range(len(lens))]
