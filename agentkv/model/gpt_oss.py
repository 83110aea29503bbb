"""gpt-oss in plain PyTorch: sliding-window (128) and full attention layers alternating, each head with a
learned sink logit, biases on every attention projection, and a MoE of clamped SwiGLU experts in every layer.

The attention, norms and RoPE (YaRN) are the Llama family's (`model/llama.py`), with the config's flags; the
experts are stored fused, as the bf16 checkpoints keep them (`mlp.experts.gate_up_proj` [E, hidden, 2I] with
gate and up interleaved, `down_proj` [E, I, hidden], a bias for each), and run through the shared
`model/moe.py` dispatch. The router takes the top k of its logits, then softmaxes those k.
"""

from __future__ import annotations

import torch
from torch import nn

from agentkv.model.config import ModelConfig
from agentkv.model.llama import DecoderLayer, LlamaForCausalLM
from agentkv.model.moe import dispatch


class GptOssExperts(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        e, h, i = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(e, h, 2 * i))
        self.gate_up_proj_bias = nn.Parameter(torch.empty(e, 2 * i))
        self.down_proj = nn.Parameter(torch.empty(e, i, h))
        self.down_proj_bias = nn.Parameter(torch.empty(e, h))
        self.limit, self.alpha = cfg.swiglu_limit, cfg.swiglu_alpha

    def forward(self, e: int, x: torch.Tensor) -> torch.Tensor:
        gate_up = x @ self.gate_up_proj[e] + self.gate_up_proj_bias[e]
        gate = gate_up[..., ::2].clamp(max=self.limit)
        up = gate_up[..., 1::2].clamp(-self.limit, self.limit)
        return ((up + 1) * gate * torch.sigmoid(gate * self.alpha)) @ self.down_proj[e] + self.down_proj_bias[e]


class GptOssMoE(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.top_k = cfg.experts_per_token
        self.router = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=True)
        self.experts = GptOssExperts(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, chosen = torch.topk(self.router(x), self.top_k, dim=-1)
        return dispatch(x, chosen, torch.softmax(top, dim=-1), lambda e, rows, w: self.experts(e, rows) * w)


class GptOssLayer(DecoderLayer):
    def make_mlp(self, cfg: ModelConfig, layer: int) -> nn.Module:
        return GptOssMoE(cfg)


class GptOssForCausalLM(LlamaForCausalLM):
    """The Llama backbone and head with gpt-oss layers."""

    layer = GptOssLayer
