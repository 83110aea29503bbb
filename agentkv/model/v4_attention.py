"""DeepSeek-V4's attention over pages (the model is `model/deepseek_v4.py`): the low-rank queries, the shared K=V
vector of every token (its raw window in the sliding page group), the compressors whose entries (and a CSA
layer's indexer keys) go to the pool's pages when their windows close, the lightning indexer's top-k, and the
attention itself (`kernels/compressed_attention.py`): a prefill chunk's queries over keys they share, the step's
decodes together, each a piece at a time within `BUDGET`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agentkv.kernels.attention import AttentionMetadata
from agentkv.kernels.compressed_attention import Tail, V4LayerKV, attend, read_window, spans
from agentkv.model.config import ModelConfig
from agentkv.model.deepseek_config import CompressedShape
from agentkv.model.llama import RMSNorm, Rotary

BUDGET = 1 << 22  # elements of one piece of queries' scores (heads x queries x keys: 16 MiB in fp32)


def unit_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without a weight (the per-head query norm, mHC's input norm)."""
    return x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + eps).to(x.dtype)


def rotate(rotary: Rotary, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """RoPE on the last `rotary.head_dim` dims of x [T, heads, dim], the rest as is."""
    d = rotary.head_dim
    return torch.cat([x[..., :-d], rotary(x[..., -d:], positions)], dim=-1)


class Compressor(nn.Module):
    """One compressed entry per `ratio` tokens: a softmax-gated pool (gate + a learned bias per slot) of the window's
    projections, normed and rotated at the window's first position. `overlap` (CSA): each token projects twice,
    and entry w pools window w-1's first half with window w's second (width 2 x ratio, stride ratio).

    Over pages, a window closes in a later step than most of its tokens ran in: their projections wait in the
    sequence's tail (`Tail`), and an entry is written to the pool's pages when its window closes."""

    def __init__(self, hidden: int, dim: int, ratio: int, overlap: bool, eps: float) -> None:
        super().__init__()
        width = 2 * dim if overlap else dim
        self.dim, self.ratio, self.overlap = dim, ratio, overlap
        self.wkv = nn.Linear(hidden, width, bias=False)
        self.wgate = nn.Linear(hidden, width, bias=False)
        self.ape = nn.Parameter(torch.empty(ratio, width))
        self.norm = RMSNorm(dim, eps)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.wkv.weight.dtype)
        return self.wkv(x), self.wgate(x)

    def pool(self, kv: torch.Tensor, gate: torch.Tensor, prev_kv: torch.Tensor, prev_gate: torch.Tensor,
             windows: torch.Tensor, rotary: Rotary) -> torch.Tensor:
        """Entries [n, dim] of windows `windows` [n] from their projections kv, gate [n, m, width] and, for CSA's
        overlap, the previous windows' prev_kv, prev_gate (window 0 has none: masked)."""
        d = self.dim
        gate = gate + self.ape
        if self.overlap:
            none = (windows == 0)[:, None, None]
            prev_kv = prev_kv[..., :d].masked_fill(none, 0.0)
            prev_gate = (prev_gate + self.ape)[..., :d].masked_fill(none, float("-inf"))
            kv, gate = torch.cat([prev_kv, kv[..., d:]], dim=1), torch.cat([prev_gate, gate[..., d:]], dim=1)
        pooled = self.norm((kv * gate.softmax(dim=1, dtype=torch.float32).to(kv.dtype)).sum(dim=1))
        return rotate(rotary, pooled[:, None], windows * self.ratio)[:, 0].to(self.norm.weight.dtype)

    def first_rebuilt(self, valid_from: int) -> int:
        """The first window whose entry a tail starting at `valid_from` rebuilds (CSA's reads the window before);
        earlier ones are in the hit's pages."""
        return -(-valid_from // self.ratio) + int(self.overlap and valid_from > 0)

    def close(self, kv: torch.Tensor, gate: torch.Tensor, tail: Tail, row: int, start: int, end: int,
              valid_from: int, rotary: Rotary) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One prefill chunk's new projections kv, gate [end - start, width] at positions start..end-1: the windows
        they close and their entries [n, dim] (or None), its tail kept up to date."""
        m, span, width = self.ratio, tail.span, kv.shape[-1]
        lo = max(start // m, self.first_rebuilt(valid_from))
        hi, lead = end // m, self.overlap and lo > 0
        windows, entries = torch.arange(lo, max(lo, hi), device=kv.device), None
        if hi > lo:
            base = (lo - lead) * m
            held = torch.arange(base, max(base, start), device=kv.device) % span
            new = slice(max(0, base - start), hi * m - start)
            rows_kv = torch.cat([tail.kv[row, held], kv[new]]).view(-1, m, width)
            rows_gate = torch.cat([tail.gate[row, held], gate[new]]).view(-1, m, width)
            prev = slice(0, -1) if lead else torch.arange(-1, hi - lo - 1, device=kv.device).clamp(min=0)
            entries = self.pool(rows_kv[int(lead):], rows_gate[int(lead):], rows_kv[prev], rows_gate[prev], windows,
                                rotary)
        keep = torch.arange(max(start, end - span), end, device=kv.device)
        tail.kv[row, keep % span], tail.gate[row, keep % span] = kv[keep - start], gate[keep - start]
        return windows, entries

    def close_decodes(self, kv: torch.Tensor, gate: torch.Tensor, tail: Tail, rows: list[int], positions: list[int],
                      valid_from: list[int], rotary: Rotary) -> tuple[list[int], torch.Tensor, torch.Tensor | None]:
        """The step's decodes together (one token each, kv, gate [B, width]): into their tails, then the entries
        of the windows their tokens close: which decodes close one, those windows, their entries [n, dim]."""
        m, span, dev = self.ratio, tail.span, kv.device
        at_row, at = torch.tensor(rows, device=dev), torch.tensor(positions, device=dev) % span
        tail.kv[at_row, at], tail.gate[at_row, at] = kv, gate
        closing = [j for j, p in enumerate(positions) if (p + 1) % m == 0 and p // m >= self.first_rebuilt(valid_from[j])]
        windows = torch.tensor([positions[j] // m for j in closing], dtype=torch.long, device=dev)
        if not closing:
            return closing, windows, None
        who = at_row[closing][:, None]
        cur = (windows[:, None] * m + torch.arange(m, device=dev)) % span
        prev = (cur - m) % span
        return closing, windows, self.pool(tail.kv[who, cur], tail.gate[who, cur], tail.kv[who, prev],
                                           tail.gate[who, prev], windows, rotary)


class Indexer(nn.Module):
    """CSA's lightning indexer: its own compressor of `index_dim`; query t scores entry s as
    sum_h w_t,h relu(q_t,h . k_s) and keeps its `index_topk` best among the closed windows. Its keys are
    read from the pages at fp4 (`codecs/fp4.py`), so it ranks what the pages hold."""

    def __init__(self, cfg: ModelConfig, v4: CompressedShape) -> None:
        super().__init__()
        self.heads, self.dim, self.topk = v4.index_heads, v4.index_dim, v4.index_topk
        self.compressor = Compressor(cfg.hidden_size, v4.index_dim, v4.csa_ratio, True, cfg.rms_norm_eps)
        self.wq_b = nn.Linear(v4.q_lora_rank, v4.index_heads * v4.index_dim, bias=False)
        self.weights_proj = nn.Linear(cfg.hidden_size, v4.index_heads, bias=False)

    def pick(self, x: torch.Tensor, q_low: torch.Tensor, positions: torch.Tensor, rotary: Rotary,
             keys: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each query's top k of the entries (keys [n, index_dim] shared, or [T, n, index_dim] its own) it may
        see (`visible` [T, n]): their indices [T, k] and which of them it may see (fewer than k closed windows:
        the rest are not attended)."""
        q = rotate(rotary, self.wq_b(q_low).view(x.shape[0], self.heads, self.dim), positions)
        pattern = "thd,sd->ths" if keys.dim() == 2 else "thd,tsd->ths"  # keys shared, or each query's own
        scores = F.relu(torch.einsum(pattern, q.float(), keys.float())) * self.dim**-0.5
        weights = self.weights_proj(x.to(self.weights_proj.weight.dtype)).float() * self.heads**-0.5
        scores = (scores * weights[..., None]).sum(dim=1).masked_fill(~visible, float("-inf"))
        chosen = scores.topk(min(self.topk, visible.shape[-1]), dim=-1).indices
        return chosen, visible.gather(-1, chosen)


class V4Attention(nn.Module):
    """Shared K=V multi-query attention over the raw window and, on CSA/HCA layers, the compressed entries."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        v4, hidden, eps = cfg.v4, cfg.hidden_size, cfg.rms_norm_eps
        assert v4 is not None
        self.v4, self.kind, self.h, self.eps = v4, v4.kinds[layer], cfg.num_heads, eps
        self.wq_a = nn.Linear(hidden, v4.q_lora_rank, bias=False)
        self.q_norm = RMSNorm(v4.q_lora_rank, eps)
        self.wq_b = nn.Linear(v4.q_lora_rank, self.h * v4.dim, bias=False)
        self.wkv = nn.Linear(hidden, v4.dim, bias=False)
        self.norm = RMSNorm(v4.dim, eps)
        self.wo_a = nn.Linear(self.h * v4.dim // v4.o_groups, v4.o_groups * v4.o_lora_rank, bias=False)
        self.wo_b = nn.Linear(v4.o_groups * v4.o_lora_rank, hidden, bias=False)
        self.attn_sink = nn.Parameter(torch.empty(self.h))
        self.scale = v4.dim**-0.5
        if self.kind != "sliding":
            ratio = v4.ratio_of(layer)
            self.compressor = Compressor(hidden, v4.dim, ratio, self.kind == "csa", eps)
        if self.kind == "csa":
            self.indexer = Indexer(cfg, v4)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rotary: Rotary, kv: V4LayerKV,
                meta: AttentionMetadata) -> torch.Tensor:
        v4, t = self.v4, x.shape[0]
        q_low = self.q_norm(self.wq_a(x))
        q = rotate(rotary, unit_rms(self.wq_b(q_low).view(t, self.h, v4.dim), self.eps), positions)
        keys = rotate(rotary, self.norm(self.wkv(x))[:, None], positions)
        kv.raw.codec.encode_into(kv.raw.k, meta.groups[0].slot_mapping, keys)
        if kv.entries is not None:
            self.compress(x, kv, meta, rotary)
        out, sequences, first = torch.empty_like(q), spans(meta), meta.num_prefills
        for i, (a, b, start, end) in enumerate(sequences[:first]):
            self.prefill(out, i, a, b, start, end, q, x, q_low, positions, kv, meta, rotary)
        if len(sequences) > first:  # the decodes together, a piece of them at a time
            d0 = sequences[first][0]
            n = max(meta.seq_lens_host[first:]) // self.ratio if kv.entries is not None else 0
            piece = max(1, BUDGET // max(self.per_query(self.window_blocks(kv) * kv.raw.block_size, n), n * v4.dim))
            for p in range(d0, t, piece):
                e, row = min(p + piece, t), first + p - d0
                out[p:e] = self.decode(slice(row, row + e - p), n, q[p:e], x[p:e], q_low[p:e], positions[p:e], kv,
                                       meta, rotary)
        grouped = rotate(rotary, out, -positions).reshape(t, v4.o_groups, -1)
        weight = self.wo_a.weight.view(v4.o_groups, v4.o_lora_rank, -1)
        return self.wo_b(torch.einsum("tgi,gri->tgr", grouped, weight).flatten(1))

    def compress(self, x: torch.Tensor, kv: V4LayerKV, meta: AttentionMetadata, rotary: Rotary) -> None:
        """The entries (and a CSA layer's indexer keys) of every window the step's tokens close, into the pages:
        each prefill chunk's, then the decodes' together."""
        assert kv.entries is not None and kv.tail is not None
        own = self.compressor.project(x)
        index = self.indexer.compressor.project(x) if self.kind == "csa" else None
        sequences, first = spans(meta), meta.num_prefills
        for i, (a, b, start, end) in enumerate(sequences[:first]):
            step = (kv.step.rows[i], start, end, kv.step.valid_from[i], rotary)
            windows, entries = self.compressor.close(own[0][a:b], own[1][a:b], kv.tail, *step)
            keys = None if index is None else self.indexer.compressor.close(index[0][a:b], index[1][a:b],
                                                                            kv.index_tail, *step)[1]
            if entries is not None:
                kv.entries.write(meta.block_tables[i : i + 1].expand(len(windows), -1), windows, entries, keys)
        if len(sequences) > first:
            d0 = sequences[first][0]
            step = (kv.step.rows[first:], [end - 1 for *_, end in sequences[first:]], kv.step.valid_from[first:],
                    rotary)
            closing, windows, entries = self.compressor.close_decodes(own[0][d0:], own[1][d0:], kv.tail, *step)
            keys = None if index is None else self.indexer.compressor.close_decodes(index[0][d0:], index[1][d0:],
                                                                                    kv.index_tail, *step)[2]
            if entries is not None:
                kv.entries.write(meta.block_tables[first:][closing], windows, entries, keys)

    @property
    def ratio(self) -> int:
        """Tokens per compressed entry (1 on a sliding layer, whose entries are none)."""
        return self.compressor.ratio if self.kind != "sliding" else 1

    def window_blocks(self, kv: V4LayerKV) -> int:
        """Blocks a decode's raw window may touch."""
        return -(-(self.v4.window - 1) // kv.raw.block_size) + 1

    def per_query(self, raw: int, entries: int) -> int:
        """Score elements a query takes: its heads over the raw window and the entries it scores (a CSA layer:
        its top k, gathered, and its indexer's heads over every entry)."""
        if self.kind != "csa":
            return self.h * (raw + entries)
        k = min(self.v4.index_topk, entries)
        return max(self.h * (raw + k), k * self.v4.dim, self.v4.index_heads * entries)

    def prefill(self, out: torch.Tensor, i: int, a: int, b: int, start: int, end: int, q: torch.Tensor,
                x: torch.Tensor, q_low: torch.Tensor, positions: torch.Tensor, kv: V4LayerKV, meta: AttentionMetadata,
                rotary: Rotary) -> None:
        """Prefill chunk i (rows a..b-1, positions start..end-1) over the keys it shares: its raw window's
        blocks and its closed entries, a piece of its queries at a time."""
        bs = kv.raw.block_size
        blocks = torch.arange(max(0, start - self.v4.window + 1) // bs, -(-end // bs), device=q.device)[None]
        raw, where = read_window(kv.raw, meta.groups[0].block_tables[i : i + 1], blocks, x.dtype)
        entries = index_keys = None
        if kv.entries is not None:
            entries, index_keys = kv.entries.read(meta.block_tables[i : i + 1], end // self.ratio, x.dtype)
        n = 0 if entries is None else entries.shape[1]
        piece = max(1, BUDGET // self.per_query(raw.shape[1], n))
        for p in range(a, b, piece):  # queries a piece: their scores within the budget
            e = min(p + piece, b)
            seen = self.in_window(positions[p:e], where[0])
            if entries is None:
                out[p:e] = attend(q[p:e], self.attn_sink, self.scale, raw[0], seen)
                continue
            closed = self.closed(positions[p:e], n)
            if index_keys is None:
                out[p:e] = attend(q[p:e], self.attn_sink, self.scale, torch.cat([raw[0], entries[0]]),
                                  torch.cat([seen, closed], dim=1))
                continue
            chosen, chosen_seen = self.indexer.pick(x[p:e], q_low[p:e], positions[p:e], rotary, index_keys[0], closed)
            out[p:e] = attend(q[p:e], self.attn_sink, self.scale, raw[0], seen, entries[0][chosen], chosen_seen)

    def decode(self, rows: slice, n: int, q: torch.Tensor, x: torch.Tensor, q_low: torch.Tensor,
               positions: torch.Tensor, kv: V4LayerKV, meta: AttentionMetadata, rotary: Rotary) -> torch.Tensor:
        """Decodes (metadata rows `rows`, one query each) together: each over its own raw window blocks and its
        first n entries (the longest's count; a shorter one's extra masked)."""
        bs, empty = kv.raw.block_size, q.new_zeros(0, self.v4.dim)
        back = torch.arange(self.window_blocks(kv) - 1, -1, -1, device=q.device)
        raw, where = read_window(kv.raw, meta.groups[0].block_tables[rows], (positions // bs)[:, None] - back, x.dtype)
        own, seen = raw, self.in_window(positions, where) & (where >= 0)
        if kv.entries is not None:
            entries, index_keys = kv.entries.read(meta.block_tables[rows], n, x.dtype)
            closed = self.closed(positions, n)
            if index_keys is not None:
                chosen, closed = self.indexer.pick(x, q_low, positions, rotary, index_keys, closed)
                entries = entries.gather(1, chosen[..., None].expand(-1, -1, entries.shape[-1]))
            own, seen = torch.cat([raw, entries], dim=1), torch.cat([seen, closed], dim=1)
        return attend(q, self.attn_sink, self.scale, empty, seen[:, :0], own, seen)

    def in_window(self, positions: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
        """Which raw keys at `where` ([K] shared, or [L, K] a query's own) each query at `positions` [L] sees: the
        last `window` positions up to its own."""
        gap = positions[:, None] - where
        return (gap >= 0) & (gap < self.v4.window)

    def closed(self, positions: torch.Tensor, n: int) -> torch.Tensor:
        """[L, n]: which of n entries each query sees (those whose windows have closed by its position)."""
        return torch.arange(n, device=positions.device)[None, :] < ((positions + 1) // self.ratio)[:, None]
