"""Llama 4 (text, `Llama4ForCausalLM`) in plain PyTorch: chunked attention on 3 layers of 4, global NoPE
attention on the 4th, and MoE layers with a shared expert.

As transformers' Llama4 does it: rotated layers attend within their chunk (`attention_chunk_size`), RoPE on
adjacent pairs of dims, then q and k RMS-normed without a weight; NoPE layers attend to everything, their
queries scaled by 1 + attn_scale * log(1 + floor((position + 1) / floor_scale)). A MoE layer routes each
token to its top-k experts by router logit, weighs the expert's *input* by the logit's sigmoid, and adds a
shared expert; its experts are stored fused (`feed_forward.experts.gate_up_proj` [E, hidden, 2I], gate then
up). Dense layers' MLP is `intermediate_size_mlp` wide.
"""

from __future__ import annotations

import torch
from torch import nn

from agentkv.kernels.attention import AttentionBackend
from agentkv.model.config import ModelConfig
from agentkv.model.llama import Attention, LlamaForCausalLM, RMSNorm
from agentkv.model.moe import GatedMLP, dispatch


class Llama4Attention(Attention):
    def __init__(self, cfg: ModelConfig, backend: AttentionBackend, layer: int) -> None:
        super().__init__(cfg, backend, layer)
        self.l2 = cfg.qk_l2_norm and self.rotated
        self.eps = cfg.rms_norm_eps
        self.floor_scale, self.attn_scale = cfg.nope_temperature

    def after_rope(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.l2:
            q, k = (t * torch.rsqrt(t.float().pow(2).mean(-1, keepdim=True) + self.eps).to(t.dtype) for t in (q, k))
        if not self.rotated and self.floor_scale:
            gain = torch.log1p(torch.floor((positions.float() + 1.0) / self.floor_scale)) * self.attn_scale + 1.0
            q = (q * gain[:, None, None]).to(q.dtype)
        return q, k


class Llama4Experts(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        e, h, i = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, h, 2 * i))
        self.down_proj = nn.Parameter(torch.empty(e, i, h))

    def forward(self, e: int, x: torch.Tensor) -> torch.Tensor:
        gate, up = (x @ self.gate_up_proj[e]).chunk(2, dim=-1)
        return (up * nn.functional.silu(gate)) @ self.down_proj[e]


class Llama4MoE(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.top_k = cfg.experts_per_token
        self.router = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = Llama4Experts(cfg)
        self.shared_expert = GatedMLP(cfg.hidden_size, cfg.moe_intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, chosen = torch.topk(self.router(x), self.top_k, dim=-1)
        routed = dispatch(x, chosen, torch.sigmoid(top.float()).to(x.dtype), lambda e, rows, w: self.experts(e, rows * w))
        return self.shared_expert(x) + routed


class Llama4Layer(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: AttentionBackend, layer: int) -> None:
        super().__init__()
        self.self_attn = Llama4Attention(cfg, backend, layer)
        self.feed_forward = Llama4MoE(cfg) if cfg.is_moe_layer(layer) else \
            GatedMLP(cfg.hidden_size, cfg.dense_intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, positions, rotary, kv, meta):
        x = x + self.self_attn(self.input_layernorm(x), positions, rotary, kv, meta)
        return x + self.feed_forward(self.post_attention_layernorm(x))


class Llama4ForCausalLM(LlamaForCausalLM):
    layer = Llama4Layer
