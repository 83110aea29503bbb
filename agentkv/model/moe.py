"""A routed mixture of experts in place of the dense MLP: each token runs through its top-k experts only.

`dispatch` (tokens grouped by expert) is shared by the MoE families; Qwen3-MoE's block is here (and
Qwen3-Next's, the same with a gated shared expert): a linear router scores every expert, the top k are kept (their
softmax weights renormalised where the config says so), and each expert is a gated MLP. Tokens are grouped
by expert so each expert runs one matmul over the tokens routed to it, not one per token. Parameter names
follow the published per-expert checkpoints (`mlp.gate`, `mlp.experts.{i}.gate_proj`), so they load as is.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from agentkv.model.config import ModelConfig

ACTIVATIONS = {"silu": nn.functional.silu, "gelu_pytorch_tanh": lambda x: nn.functional.gelu(x, approximate="tanh")}


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): the dense MLP of every Llama-family and Gemma layer, and each expert of a
    Qwen3-MoE."""

    def __init__(self, hidden: int, intermediate: int, activation: str = "silu") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"config.json: MLP activation {activation!r} is not supported "
                             f"({', '.join(ACTIVATIONS)})")
        self.act = ACTIVATIONS[activation]
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class SparseMoE(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.top_k, self.renormalise = cfg.experts_per_token, cfg.norm_topk_prob
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(GatedMLP(cfg.hidden_size, cfg.moe_intermediate_size)
                                     for _ in range(cfg.num_experts))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token's top-k experts [T, k] and their weights [T, k] (softmax in fp32, as the references)."""
        probs = torch.softmax(self.gate(x).float(), dim=-1)
        weights, chosen = torch.topk(probs, self.top_k, dim=-1)
        if self.renormalise:
            weights = weights / weights.sum(-1, keepdim=True)
        return chosen, weights.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        chosen, weights = self.route(x)
        return dispatch(x, chosen, weights, lambda e, rows, w: self.experts[e](rows) * w)


class SharedExpertMoE(SparseMoE):
    """Qwen3-Next's block: the routed experts plus a shared expert (a gated MLP every token runs), weighed per
    token by sigmoid(shared_expert_gate(x))."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.shared_expert = GatedMLP(cfg.hidden_size, cfg.shared_expert_size)
        self.shared_expert_gate = nn.Linear(cfg.hidden_size, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)


def dispatch(x: torch.Tensor, chosen: torch.Tensor, weights: torch.Tensor,
             expert: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """The sum over each token's chosen experts of expert(e, token, its weight) (which weighs the output, or the
    input as Llama 4 does): tokens grouped by expert, so each expert runs once, over the rows routed to it.
    chosen, weights: [T, k]."""
    out = torch.zeros_like(x)
    k = chosen.shape[1]
    flat = chosen.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat).tolist()
    tokens = order // k  # the token of each (token, slot) pair, grouped by expert
    scale = weights.reshape(-1)[order, None]
    start = 0
    for e, n in enumerate(counts):
        if n:
            rows = tokens[start : start + n]
            out.index_add_(0, rows, expert(e, x[rows], scale[start : start + n]))
        start += n
    return out
