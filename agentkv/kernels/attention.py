"""Attention over paged KV, behind one interface: the torch reference here runs anywhere (CPU tests, any
GPU); fused GPU kernels implement the same `forward`.

The KV cache of a layer is two tensors [num_blocks, block_size, kv_heads, head_dim]. A batch is flattened:
its new tokens' K/V are written at `slot_mapping` (block * block_size + offset), then each sequence's queries
attend over its context, gathered through its block table, causally.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    slot_mapping: torch.Tensor  # [T] where each new token's K/V goes
    seqs: list[SeqAttention]


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
        for s in meta.seqs:
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
