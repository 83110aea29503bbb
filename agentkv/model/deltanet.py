"""The gated delta rule and its short causal convolution over state slots: a linear-attention layer's per-sequence
state, not pages.

A gated DeltaNet layer (Qwen3-Next) keeps, per sequence, the last `kernel - 1` inputs of its depthwise causal
convolution and a recurrent state [value heads, key dim, value dim]; both have the same size at any context
length. The engine holds them in slots (`engine/state_slots.py`); each step it says which slot each sequence of
the flattened batch reads and updates, and where a state at a block boundary is to be copied (a snapshot, which
a later prefix hit restores). Prefill runs the chunked form of the rule (pieces of at most `PIECE` tokens, cut at
the snapshot boundaries so each boundary's state exists), decode the recurrent form, batched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from agentkv.model.config import ModelConfig

PIECE = 64  # tokens per chunk of the chunked rule (as the reference's default)


@dataclass(slots=True)
class StateSpan:
    """One prefill chunk's sequence: its slot, its tokens in the batch, and the states to copy on the way:
    (tokens after the chunk's start, destination slot)."""

    slot: int
    n: int
    snapshots: list[tuple[int, int]] = field(default_factory=list)


@dataclass(slots=True)
class StateStep:
    """What every linear layer reads this step, filled by the slot pool before the forward pass: prefill spans in
    batch order, then the decodes' slots (one token each) and their snapshots (decode index, destination slot)."""

    prefills: list[StateSpan] = field(default_factory=list)
    decode_slots: torch.Tensor | None = None
    decode_snapshots: list[tuple[int, int]] = field(default_factory=list)


@dataclass(slots=True)
class LayerState:
    """One linear layer's slots, typed views of the pool's slab: conv [slots, channels, kernel - 1] and
    recurrent [slots, value heads, key dim, value dim]; `step` is the pool's, shared by every layer."""

    conv: torch.Tensor
    recurrent: torch.Tensor
    step: StateStep


def state_slot_bytes(cfg: ModelConfig, dtype: torch.dtype) -> int:
    """One sequence's state over every linear layer, in `dtype` (what `kvcache/sizing.py`'s state_bytes prices)."""
    return sum(cfg.linear_layers) * cfg.deltanet.state_values * dtype.itemsize  # type: ignore[union-attr]


def state_views(cfg: ModelConfig, slab: torch.Tensor, dtype: torch.dtype, step: StateStep) -> list[LayerState]:
    """Each linear layer's conv and recurrent states, typed views of a slab [slots, slot bytes] (uint8)."""
    s = cfg.deltanet
    assert s is not None
    shapes = ((2 * s.k_heads * s.k_dim + s.v_heads * s.v_dim, s.conv_kernel - 1), (s.v_heads, s.k_dim, s.v_dim))
    layers, off = [], 0
    for _ in range(sum(cfg.linear_layers)):
        views = []
        for shape in shapes:
            n = dtype.itemsize * math.prod(shape)
            views.append(slab[:, off : off + n].view(dtype).view(slab.shape[0], *shape))
            off += n
        layers.append(LayerState(views[0], views[1], step))
    return layers


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def causal_conv(x: torch.Tensor, past: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """silu(depthwise causal conv) of x [n, C] after the `past` inputs [C, K-1]; returns the output [n, C] and
    every input in order [C, K-1+n] (a state at any point is the K-1 inputs before it)."""
    seq = torch.cat([past.to(x.dtype), x.t()], dim=-1)
    out = F.conv1d(seq[None], weight.to(x.dtype), groups=seq.shape[0])[0]
    return F.silu(out).t(), seq


def delta_piece(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule over one piece, all its tokens at once (the UT transform of the DeltaNet paper).
    q, k [B, H, L, dk] (normalised, q scaled), v [B, H, L, dv], g, beta [B, H, L], state [B, H, dk, dv], all fp32.
    Returns the outputs [B, H, L, dv] and the state after the piece."""
    L = q.shape[2]
    cum = g.cumsum(-1)
    lower = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    decay = (cum[..., :, None] - cum[..., None, :]).masked_fill(~lower, float("-inf")).exp()
    k_beta = k * beta[..., None]
    system = (k_beta @ k.transpose(-1, -2)) * decay
    new_v = torch.linalg.solve_triangular(system, v * beta[..., None], upper=False, unitriangular=True)
    k_decayed = torch.linalg.solve_triangular(system, k_beta * cum.exp()[..., None], upper=False, unitriangular=True)
    v_new = new_v - k_decayed @ state
    out = (q * cum.exp()[..., None]) @ state + ((q @ k.transpose(-1, -2)) * decay) @ v_new
    last = cum[..., -1:]
    state = state * last.exp()[..., None] + (k * (last - cum).exp()[..., None]).transpose(-1, -2) @ v_new
    return out, state


def gated_delta(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                state: torch.Tensor, cuts: list[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """One sequence's span of n tokens ([1, H, n, ...]) in pieces of at most PIECE tokens, cut also at each of
    `cuts` (token offsets in (0, n]); returns the outputs and the state at each cut and at n."""
    n = q.shape[2]
    outs, at, start = [], {}, 0
    for end in sorted({*cuts, *range(PIECE, n, PIECE), n}):
        s = slice(start, end)
        out, state = delta_piece(q[:, :, s], k[:, :, s], v[:, :, s], g[:, :, s], beta[:, :, s], state)
        outs.append(out)
        at[end] = state
        start = end
    return torch.cat(outs, dim=2), at
