"""Next-token sampling: greedy, or temperature with top-k / top-p, reproducible per request with a seed."""

from __future__ import annotations

import torch

from agentkv.engine.sequence import SamplingParams


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int]:
    """One token per row of `logits` [B, vocab] (float32)."""
    greedy = torch.argmax(logits, dim=-1).tolist()
    out = []
    for row, (p, g) in enumerate(zip(params, generators, strict=True)):
        if p.temperature == 0:
            out.append(greedy[row])
            continue
        x = logits[row] / p.temperature
        if p.top_k:
            kth = torch.topk(x, min(p.top_k, x.numel())).values[-1]
            x = x.masked_fill(x < kth, float("-inf"))
        if p.top_p < 1.0:
            order = torch.argsort(x, descending=True)
            probs = torch.softmax(x[order], dim=-1)
            cut = torch.cumsum(probs, dim=-1) - probs >= p.top_p  # keep the smallest set reaching top_p
            x[order[cut]] = float("-inf")
        out.append(int(torch.multinomial(torch.softmax(x, dim=-1), 1, generator=g)))
    return out
