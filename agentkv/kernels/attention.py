"""Attention over paged KV, behind one interface: the torch reference here runs anywhere (CPU tests, any
GPU); fused GPU kernels implement the same `forward`.

The KV cache of a layer is two tensors [num_blocks, block_size, kv_heads, head_dim]. A batch is flattened:
its new tokens' K/V are written at `slot_mapping` (block * block_size + offset), then each sequence's queries
attend over its context, gathered through its block table, causally.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F


@dataclass(slots=True)
class SeqAttention:
    q_start: int  # the sequence's first row in the flattened batch
    q_len: int  # its new tokens this step
    kv_slots: torch.Tensor  # [context] flat slots of every token it attends to, in position order


@dataclass(slots=True)
class AttentionMetadata:
    """Built once per step and shared by every layer. Single-token (decode) sequences are gathered into one
    padded batch here, so each layer runs one attention call for all of them."""

    slot_mapping: torch.Tensor  # [T] where each new token's K/V goes
    seqs: list[SeqAttention]
    others: list[SeqAttention] = field(init=False)  # prefill chunks: attended one by one
    decode_rows: torch.Tensor | None = field(init=False)  # [B] their rows in the batch
    decode_slots: torch.Tensor | None = field(init=False)  # [B, L] context slots, padded
    decode_mask: torch.Tensor | None = field(init=False)  # [B, 1, 1, L] true where a slot is real

    def __post_init__(self) -> None:
        decodes = [s for s in self.seqs if s.q_len == 1]
        self.others = [s for s in self.seqs if s.q_len != 1]
        self.decode_rows = self.decode_slots = self.decode_mask = None
        if decodes:
            dev = self.slot_mapping.device
            longest = max(len(s.kv_slots) for s in decodes)
            slots = torch.zeros(len(decodes), longest, dtype=torch.long, device=dev)
            mask = torch.zeros(len(decodes), longest, dtype=torch.bool, device=dev)
            for i, s in enumerate(decodes):
                slots[i, : len(s.kv_slots)] = s.kv_slots
                mask[i, : len(s.kv_slots)] = True
            self.decode_rows = torch.tensor([s.q_start for s in decodes], dtype=torch.long, device=dev)
            self.decode_slots, self.decode_mask = slots, mask[:, None, None, :]


class AttentionBackend(Protocol):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor: ...


class TorchAttention:
    """Reference paged attention: write the new K/V, gather each sequence's context, causal SDPA (GQA)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, meta: AttentionMetadata, scale: float) -> torch.Tensor:
        kvh, d = k_cache.shape[-2:]
        flat_k, flat_v = k_cache.view(-1, kvh, d), v_cache.view(-1, kvh, d)
        flat_k[meta.slot_mapping] = k.to(flat_k.dtype)
        flat_v[meta.slot_mapping] = v.to(flat_v.dtype)
        out = torch.empty_like(q)
        if meta.decode_rows is not None:  # all single-token queries at once: [B, H, 1, D] over padded contexts
            qd = q[meta.decode_rows].unsqueeze(2)
            kd = flat_k[meta.decode_slots].transpose(1, 2).to(q.dtype)  # [B, KVH, L, D]
            vd = flat_v[meta.decode_slots].transpose(1, 2).to(q.dtype)
            o = F.scaled_dot_product_attention(qd, kd, vd, attn_mask=meta.decode_mask, scale=scale, enable_gqa=True)
            out[meta.decode_rows] = o.squeeze(2)
        for s in meta.others:
            qs = q[s.q_start : s.q_start + s.q_len].transpose(0, 1)  # [H, q, D]
            ks = flat_k[s.kv_slots].transpose(0, 1).to(q.dtype)  # [KVH, ctx, D]
            vs = flat_v[s.kv_slots].transpose(0, 1).to(q.dtype)
            ctx = ks.shape[1]
            # query i sits at position ctx - q_len + i and sees keys up to it
            rows = torch.arange(ctx - s.q_len, ctx, device=q.device)[:, None]
            mask = torch.arange(ctx, device=q.device)[None, :] <= rows
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale, enable_gqa=True)
            out[s.q_start : s.q_start + s.q_len] = o.transpose(0, 1)
        return out
