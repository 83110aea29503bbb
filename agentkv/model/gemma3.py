"""Gemma 3 (text) in plain PyTorch: 5 sliding-window layers to 1 global one, over the same paged attention.

What differs from the Llama family, each as transformers' Gemma3 does it: the embeddings are scaled by
sqrt(hidden); RMSNorm multiplies by (1 + weight); each layer norms its attention and MLP outputs too (four
norms); sliding layers rotate with their own RoPE base (10k), unscaled, global ones with the config's base and
scaling; queries are scaled by query_pre_attn_scalar; the MLP is gated GELU-tanh. Parameter names follow the
Hugging Face checkpoints (`Gemma3ForCausalLM`).
"""

from __future__ import annotations

import torch
from torch import nn

from agentkv.kernels.attention import AttentionBackend
from agentkv.model.config import ModelConfig
from agentkv.model.llama import Attention, Backbone, LlamaForCausalLM, Rotary
from agentkv.model.moe import GatedMLP


class GemmaRMSNorm(nn.Module):
    """x / rms(x) * (1 + weight), in fp32, cast back (a zero weight is the identity scale)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * (1.0 + self.weight.float())).to(x.dtype)


class Gemma3Layer(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: AttentionBackend, layer: int) -> None:
        super().__init__()
        self.self_attn = Attention(cfg, backend, layer, norm=GemmaRMSNorm)
        self.mlp = GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.activation)
        norm = lambda: GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)  # noqa: E731
        self.input_layernorm, self.post_attention_layernorm = norm(), norm()
        self.pre_feedforward_layernorm, self.post_feedforward_layernorm = norm(), norm()

    def forward(self, x, positions, rotary, kv, meta):
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), positions, rotary, kv, meta))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Gemma3ForCausalLM(LlamaForCausalLM):
    layer = Gemma3Layer

    def backbone(self, cfg: ModelConfig, backend: AttentionBackend) -> nn.Module:
        model = Backbone(cfg, backend, self.layer)
        model.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        model.local_rotary = Rotary(cfg.head_dim, cfg.local_rope_theta, {"rope_type": "default"})
        return model

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.model.embed_tokens(input_ids)
        return x * torch.tensor(self.config.hidden_size**0.5, dtype=x.dtype)

    def rotary_of(self, layer: nn.Module) -> Rotary:
        return self.model.local_rotary if layer.self_attn.window else self.model.rotary
