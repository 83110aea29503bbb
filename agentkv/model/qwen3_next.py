"""Qwen3-Next (`Qwen3NextForCausalLM`) in plain PyTorch: gated DeltaNet layers (3 of 4) and gated full attention
(the 4th), every layer's MLP a MoE with a shared expert.

As transformers' Qwen3Next does it: a DeltaNet layer projects q, k, v, a gate z (grouped per key head) and the
per-value-head beta and decay inputs; q, k, v pass a short depthwise causal conv (silu); q and k are L2-normed;
the gated delta rule (`model/deltanet.py`) reads and writes the sequence's state slot; the output is RMS-normed,
gated by silu(z), projected. Full-attention layers double q_proj to carry a per-head output gate (sigmoid), norm
q and k, and rotate only the first `partial_rotary_factor` of each head. Norms scale by (1 + weight), as
Gemma's. The MoE block adds a shared expert weighed by a sigmoid gate (`model/moe.py`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from agentkv.kernels.attention import AttentionBackend
from agentkv.model.config import ModelConfig
from agentkv.model.deltanet import LayerState, causal_conv, delta_piece, gated_delta, l2norm
from agentkv.model.gemma3 import GemmaRMSNorm
from agentkv.model.llama import Attention, Backbone, LlamaForCausalLM, Rotary
from agentkv.model.moe import GatedMLP, SharedExpertMoE


class GatedRMSNorm(nn.Module):
    """weight * rms-normed x, times silu(gate): the DeltaNet output's norm (a plain weight, initialised to 1)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = self.weight * (y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return (y * F.silu(gate.float())).to(x.dtype)


class GatedDeltaNet(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        s = cfg.deltanet
        assert s is not None
        self.shape = s
        conv_dim = 2 * s.k_heads * s.k_dim + s.v_heads * s.v_dim
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, s.conv_kernel, groups=conv_dim, bias=False,
                                padding=s.conv_kernel - 1)
        self.in_proj_qkvz = nn.Linear(cfg.hidden_size, 2 * s.k_heads * s.k_dim + 2 * s.v_heads * s.v_dim, bias=False)
        self.in_proj_ba = nn.Linear(cfg.hidden_size, 2 * s.v_heads, bias=False)
        self.dt_bias = nn.Parameter(torch.ones(s.v_heads))
        self.A_log = nn.Parameter(torch.zeros(s.v_heads))
        self.norm = GatedRMSNorm(s.v_dim, cfg.rms_norm_eps)
        self.out_proj = nn.Linear(s.v_heads * s.v_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rotary: Rotary, kv: LayerState,
                meta: object) -> torch.Tensor:
        s, T = self.shape, x.shape[0]
        per = s.v_heads // s.k_heads  # value heads per key head
        q, k, v, z = self.in_proj_qkvz(x).view(T, s.k_heads, -1).split(
            [s.k_dim, s.k_dim, per * s.v_dim, per * s.v_dim], dim=-1)
        b, a = self.in_proj_ba(x).view(T, s.k_heads, 2 * per).split([per, per], dim=-1)
        mixed = self.convolve(torch.cat([q.reshape(T, -1), k.reshape(T, -1), v.reshape(T, -1)], dim=-1), kv)
        q, k, v = mixed.split([s.k_heads * s.k_dim, s.k_heads * s.k_dim, s.v_heads * s.v_dim], dim=-1)
        q = l2norm(q.reshape(T, s.k_heads, s.k_dim).float()).repeat_interleave(per, 1) * s.k_dim**-0.5
        k = l2norm(k.reshape(T, s.k_heads, s.k_dim).float()).repeat_interleave(per, 1)
        beta = b.reshape(T, s.v_heads).sigmoid().float()
        g = -self.A_log.float().exp() * F.softplus(a.reshape(T, s.v_heads).float() + self.dt_bias)
        core = self.recur(q, k, v.reshape(T, s.v_heads, s.v_dim).float(), g, beta, kv)
        core = self.norm(core.to(x.dtype), z.reshape(T, s.v_heads, s.v_dim))
        return self.out_proj(core.reshape(T, -1))

    def convolve(self, mixed: torch.Tensor, kv: LayerState) -> torch.Tensor:
        """The causal conv of each sequence after its slot's past inputs; slots (and snapshots) take the new ones."""
        step, past, weight = kv.step, self.shape.conv_kernel - 1, self.conv1d.weight
        out, off = torch.empty_like(mixed), 0
        for span in step.prefills:
            out[off : off + span.n], seq = causal_conv(mixed[off : off + span.n], kv.conv[span.slot], weight)
            for cut, dest in span.snapshots:
                kv.conv[dest] = seq[:, cut : cut + past]
            kv.conv[span.slot] = seq[:, span.n :]
            off += span.n
        if step.decode_slots is not None:
            slots = step.decode_slots
            seq = torch.cat([kv.conv[slots].to(mixed.dtype), mixed[off:, :, None]], dim=-1)
            out[off:] = F.silu((seq * weight[:, 0, :].to(mixed.dtype)).sum(-1))
            kv.conv[slots] = seq[:, :, 1:].to(kv.conv.dtype)
        return out

    def recur(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
              kv: LayerState) -> torch.Tensor:
        """The gated delta rule from each slot's state: chunked over prefill spans, one recurrent step for the
        decodes together; the states at snapshot points are copied to their slots. Returns [T, v heads, v dim]."""
        step, out, off = kv.step, torch.empty_like(v), 0
        heads = lambda t, s: t[s].transpose(0, 1)[None]  # noqa: E731  [n, H, ...] -> [1, H, n, ...]
        for span in step.prefills:
            s = slice(off, off + span.n)
            state = kv.recurrent[span.slot].float()[None]
            o, states = gated_delta(heads(q, s), heads(k, s), heads(v, s), heads(g, s), heads(beta, s), state,
                                    [cut for cut, _ in span.snapshots] + [span.n])
            out[s] = o[0].transpose(0, 1)
            for cut, dest in span.snapshots:
                kv.recurrent[dest] = states[cut][0]
            kv.recurrent[span.slot] = states[span.n][0]
            off += span.n
        if step.decode_slots is not None:
            slots, one = step.decode_slots, lambda t: t[off:].unsqueeze(2)
            o, state = delta_piece(one(q), one(k), one(v), one(g), one(beta), kv.recurrent[slots].float())
            out[off:] = o[:, :, 0]
            kv.recurrent[slots] = state.to(kv.recurrent.dtype)
        for i, dest in step.decode_snapshots:
            slot = int(step.decode_slots[i])  # type: ignore[index]
            kv.conv[dest], kv.recurrent[dest] = kv.conv[slot], kv.recurrent[slot]
        return out


class GatedAttention(Attention):
    """Full attention whose q_proj also yields a per-head output gate; RoPE on the first `rotary_dim` dims."""

    def __init__(self, cfg: ModelConfig, backend: AttentionBackend, layer: int) -> None:
        super().__init__(cfg, backend, layer, norm=GemmaRMSNorm)
        self.q_proj = nn.Linear(cfg.hidden_size, 2 * self.h * self.d, bias=cfg.qkv_bias)
        self.rotary_dim = cfg.rotary_dim or self.d

    def forward(self, x, positions, rotary, kv, meta):
        T, r = x.shape[0], self.rotary_dim
        q, gate = self.q_proj(x).view(T, self.h, 2 * self.d).chunk(2, dim=-1)
        k = self.k_norm(self.k_proj(x).view(T, self.kvh, self.d))
        v = self.v_proj(x).view(T, self.kvh, self.d)
        q = self.q_norm(q.contiguous())
        q = torch.cat([rotary(q[..., :r], positions), q[..., r:]], dim=-1)
        k = torch.cat([rotary(k[..., :r], positions), k[..., r:]], dim=-1)
        out = self.backend.forward(q, k, v, kv, meta, self.scale, 0, None, 0)
        out = out.reshape(T, self.h * self.d) * torch.sigmoid(gate.reshape(T, self.h * self.d))
        return self.o_proj(out)


class Qwen3NextLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: AttentionBackend, layer: int) -> None:
        super().__init__()
        self.linear = cfg.is_linear_layer(layer)
        if self.linear:
            self.linear_attn = GatedDeltaNet(cfg)
        else:
            self.self_attn = GatedAttention(cfg, backend, layer)
        self.mlp = SharedExpertMoE(cfg) if cfg.is_moe_layer(layer) else \
            GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.activation)
        self.input_layernorm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, positions, rotary, kv, meta):
        mixer = self.linear_attn if self.linear else self.self_attn
        x = x + mixer(self.input_layernorm(x), positions, rotary, kv, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class Qwen3NextForCausalLM(LlamaForCausalLM):
    layer = Qwen3NextLayer

    def backbone(self, cfg: ModelConfig, backend: AttentionBackend) -> nn.Module:
        model = Backbone(cfg, backend, self.layer)
        model.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        model.rotary = Rotary(cfg.rotary_dim or cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        return model

