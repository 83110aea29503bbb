"""Attention over paged KV, behind one interface: the torch reference here runs anywhere (CPU tests, any GPU)
and is what every fused GPU kernel is tested against.

A batch is flattened: prefill chunks first, then single-token decodes. Each new token's K/V is encoded into
its page at `slot_mapping` (page * block_size + offset); then each sequence's queries attend over its pages
(`block_tables`), causally: the i-th of a sequence's q_len new tokens sits at position seq_len - q_len + i.
The backend builds its own metadata from the step's sequences (`prepare`), keeping block tables as a
persistent tensor with one row per running sequence, updated only where a sequence gained pages.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from agentkv.codecs import KVCodec


@dataclass(slots=True)
class LayerKV:
    """One layer's K and V pages as the codec's typed fields, each [num_pages, *field.shape]."""

    codec: KVCodec
    k: dict[str, torch.Tensor]
    v: dict[str, torch.Tensor]
    group: int = 0  # its page group: 0 the pool's (full layers), 1 the sliding layers' (`AttentionMetadata.groups`)

    @property
    def block_size(self) -> int:
        return next(iter(self.k.values())).shape[1]


@dataclass(slots=True)
class SeqSlice:
    """What one sequence contributes to a step: its block-table row, its pages, its new and total tokens."""

    row: int  # its persistent row in the backend's block-table tensor (stable while it runs)
    pages: list[int]  # its block table: physical pages in position order (owned by the sequence)
    q_len: int
    seq_len: int  # context after this step: cached + computed + new


@dataclass(slots=True, frozen=True)
class Mask:
    """What one layer's queries see: causal, within `window` tokens or within their `chunk` where set, plus a
    sink logit per head."""

    scale: float
    window: int = 0
    sinks: torch.Tensor | None = None
    chunk: int = 0

    def visible(self, kpos: torch.Tensor, qpos: torch.Tensor) -> torch.Tensor:
        """[n, L, K] bool: key positions kpos [K] each query position qpos [n, L] may attend."""
        seen = kpos[None, None, :] <= qpos[:, :, None]
        if self.window:
            seen &= kpos[None, None, :] > qpos[:, :, None] - self.window
        if self.chunk:
            seen &= kpos[None, None, :] >= qpos[:, :, None] // self.chunk * self.chunk
        return seen


@dataclass(slots=True)
class AttentionMetadata:
    """Built once per step, shared by every layer. Rows 0..num_prefills-1 are prefill chunks, the rest decodes."""

    slot_mapping: torch.Tensor  # [T] int64: where each new token's K/V goes
    query_start_loc: torch.Tensor  # [B+1] int32: cumulative query lengths
    seq_lens: torch.Tensor  # [B] int32
    block_tables: torch.Tensor  # [B, max_pages] int32 (entries past a sequence's pages are 0)
    num_prefills: int
    max_query_len: int
    max_seq_len: int
    query_start_loc_host: list[int]  # the same, on the host, for the reference backend's Python loops
    seq_lens_host: list[int]
    groups: tuple[AttentionMetadata, ...] = ()  # page group g >= 1's own block tables and slots: groups[g - 1]


class AttentionBackend(ABC):
    """Owns its metadata: persistent block tables (one row per running sequence), built incrementally."""

    device: torch.device
    tables: torch.Tensor  # [max_rows, max_pages] int32: the running sequences' block tables
    synced: list[int]  # pages of each row already in `tables`

    def bind(self, max_rows: int, max_pages: int, device: torch.device) -> None:
        """Size the persistent metadata for an engine (called once the engine knows its limits)."""
        self.device = device
        self.tables = torch.zeros(max_rows, max_pages, dtype=torch.int32, device=device)
        self.synced = [0] * max_rows

    def release_row(self, row: int) -> None:
        self.synced[row] = 0

    def prepare(self, seqs: list[SeqSlice], num_prefills: int, block_size: int) -> AttentionMetadata:
        """Everything is built on the host and crosses to the device in one non-blocking copy from pinned
        memory (on CUDA): no host sync in the step. Block-table rows get only the pages they gained."""
        upd_rows: list[int] = []
        upd_cols: list[int] = []
        upd_vals: list[int] = []
        for s in seqs:
            n, m = self.synced[s.row], len(s.pages)
            if m != n:  # gained pages, or a row reused without release (rewritten whole)
                first = n if m > n else 0
                upd_rows += [s.row] * (m - first)
                upd_cols += range(first, m)
                upd_vals += s.pages[first:]
                self.synced[s.row] = m
        slots: list[int] = []
        qsl = [0]
        for s in seqs:
            for pos in range(s.seq_len - s.q_len, s.seq_len):
                slots.append(s.pages[pos // block_size] * block_size + pos % block_size)
            qsl.append(qsl[-1] + s.q_len)
        lens = [s.seq_len for s in seqs]
        parts = [slots, qsl, lens, [s.row for s in seqs], upd_rows, upd_cols, upd_vals]
        host = torch.tensor([x for p in parts for x in p], dtype=torch.long,
                            pin_memory=self.device.type == "cuda")
        dev = host.to(self.device, non_blocking=True)
        cut = list(itertools.accumulate(len(p) for p in parts))
        d_slots, d_qsl, d_lens, d_rows, d_ur, d_uc, d_uv = torch.tensor_split(dev, cut[:-1])
        if upd_rows:
            self.tables[d_ur, d_uc] = d_uv.to(torch.int32)
        width = max((-(-n // block_size) for n in lens), default=0)
        return AttentionMetadata(d_slots, d_qsl.to(torch.int32), d_lens.to(torch.int32), self.tables[d_rows, :width],
                                 num_prefills, max((s.q_len for s in seqs), default=0), max(lens, default=0), qsl,
                                 lens)

    @abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: LayerKV, meta: AttentionMetadata,
                scale: float, window: int = 0, sinks: torch.Tensor | None = None, chunk: int = 0) -> torch.Tensor:
        """Write k/v [T, kv_heads, D] into their pages, then attend: q [T, heads, D] → [T, heads, D].
        window > 0: a query at position p sees keys at p - window + 1 .. p only (a sliding layer);
        chunk > 0: keys from the start of p's chunk of `chunk` tokens (a chunked layer, Llama 4).
        sinks [heads]: a learned logit per head that joins every softmax's denominator (gpt-oss)."""


class TorchAttention(AttentionBackend):
    """The reference: pages are decoded and attended a chunk at a time with an online softmax (running max and
    sum, as FlashAttention does), so extra memory is bounded by `budget` elements, not by context length."""

    budget = 1 << 22  # elements of one chunk's scores or decoded K (16 MiB in fp32)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: LayerKV, meta: AttentionMetadata,
                scale: float, window: int = 0, sinks: torch.Tensor | None = None, chunk: int = 0) -> torch.Tensor:
        if kv.group:
            meta = meta.groups[kv.group - 1]
        kv.codec.encode_into(kv.k, meta.slot_mapping, k)
        kv.codec.encode_into(kv.v, meta.slot_mapping, v)
        out = torch.empty_like(q)
        qsl, lens, p = meta.query_start_loc_host, meta.seq_lens_host, meta.num_prefills
        mask = Mask(scale, window, sinks, chunk)
        for i in range(p):  # prefill chunks one at a time: their query lengths differ
            a, b = qsl[i], qsl[i + 1]
            out[a:b] = self._attend(q[a:b][None], kv, meta.block_tables[i : i + 1], lens[i : i + 1], mask)[0]
        if len(lens) > p:  # every decode at once: one query each
            a, b = qsl[p], qsl[-1]
            out[a:b] = self._attend(q[a:b][:, None], kv, meta.block_tables[p:], lens[p:], mask)[:, 0]
        return out

    def _attend(self, q: torch.Tensor, kv: LayerKV, tables: torch.Tensor, lens: list[int], mask: Mask,
                ) -> torch.Tensor:
        """q [n, L, H, D]: the last L positions of n sequences of lengths `lens` → [n, L, H, D]."""
        n, L, H, D = q.shape
        bs = kv.block_size
        kvh = next(iter(kv.k.values())).shape[2]
        g = H // kvh
        lens_t = torch.tensor(lens, device=q.device)
        qpos = lens_t[:, None] - L + torch.arange(L, device=q.device)  # [n, L]
        pages = -(-max(lens) // bs)
        step = max(1, self.budget // (n * bs * max(L * H, kvh * D)))
        if pages <= step and mask.sinks is None:  # the context fits the budget: one fused call
            idx = tables[:, :pages].reshape(-1).long()
            kc = kv.codec.decode(kv.k, idx, q.dtype).view(n, pages * bs, kvh, D).transpose(1, 2)
            vc = kv.codec.decode(kv.v, idx, q.dtype).view(n, pages * bs, kvh, D).transpose(1, 2)
            seen = mask.visible(torch.arange(pages * bs, device=q.device), qpos)
            o = F.scaled_dot_product_attention(q.transpose(1, 2), kc, vc, attn_mask=seen[:, None],
                                               scale=mask.scale, enable_gqa=True)
            return o.transpose(1, 2)
        qg = q.float().view(n, L, kvh, g, D) * mask.scale
        m = torch.full((n, L, kvh, g), float("-inf"), device=q.device)
        s_sum = torch.zeros(n, L, kvh, g, device=q.device)
        if mask.sinks is not None:  # a sink is one more key, of value 0: the running softmax starts from it
            m = mask.sinks.float().view(1, 1, kvh, g).expand(n, L, kvh, g).clone()
            s_sum += 1.0
        acc = torch.zeros(n, L, kvh, g, D, device=q.device)
        for j in range(0, pages, step):
            c = min(step, pages - j)
            idx = tables[:, j : j + c].reshape(-1).long()
            kc = kv.codec.decode(kv.k, idx, torch.float32).view(n, c * bs, kvh, D)
            vc = kv.codec.decode(kv.v, idx, torch.float32).view(n, c * bs, kvh, D)
            kpos = j * bs + torch.arange(c * bs, device=q.device)
            s = torch.einsum("nlkgd,ntkd->nlkgt", qg, kc)
            s = s.masked_fill(~mask.visible(kpos, qpos)[:, :, None, None, :], float("-inf"))
            m_new = torch.maximum(m, s.amax(-1))
            base = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)  # rows that saw no key yet
            prob = torch.exp(s - base[..., None])
            fade = torch.exp(m - base)
            s_sum = s_sum * fade + prob.sum(-1)
            acc = acc * fade[..., None] + torch.einsum("nlkgt,ntkd->nlkgd", prob, vc)
            m = m_new
        return (acc / s_sum[..., None]).view(n, L, H, D).to(q.dtype)
