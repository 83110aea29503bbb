"""Next-token sampling for a whole batch at once: greedy, or temperature with top-k / top-p, each row with its
own settings, reproducible per request with a seed.

No per-row Python loop over the vocabulary (the GPU engine calls this every step): top-k and top-p are one
sort of the batch's logits, and the draw is the exponential race argmax(p / E), E ~ Exp(1) — an exact sample
from p. Seeded requests draw their E from their own generator (a row each, only for those rows), so a seeded
request's tokens do not depend on what it is batched with. One host sync: the sampled tokens.
Rows with a `logit_bias` get it added first, then rows under a grammar (engine/grammar.py) their mask; a
batch without either skips it entirely.
"""

from __future__ import annotations

from typing import Any

import torch

from agentkv.engine.grammar import apply_masks
from agentkv.engine.sequence import SamplingParams


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
           matchers: list[Any] | None = None) -> list[int]:
    """One token per row of `logits` [B, vocab] (float32); `matchers`: each row's grammar matcher or None."""
    if any(p.logit_bias for p in params):
        add_bias(logits, params)
    if matchers is not None and any(m is not None for m in matchers):
        apply_masks(logits, matchers)
    greedy = logits.argmax(-1)
    if all(p.temperature == 0 for p in params):
        return greedy.tolist()
    dev = logits.device
    temps = torch.tensor([p.temperature for p in params], device=dev, dtype=logits.dtype)
    x = logits / torch.where(temps > 0, temps, 1.0)[:, None]
    if any(p.top_k for p in params) or any(p.top_p < 1.0 for p in params):
        x = truncate(x, [p.top_k for p in params], [p.top_p for p in params])
    race = torch.empty_like(x).exponential_()
    for row, g in enumerate(generators):
        if g is not None:
            race[row].exponential_(generator=g)
    drawn = (torch.softmax(x, -1) / race).argmax(-1)
    return torch.where(temps > 0, drawn, greedy).tolist()


def add_bias(logits: torch.Tensor, params: list[SamplingParams]) -> None:
    """Each row's `logit_bias` added to its logits (vLLM's and OpenAI's meaning: before temperature, top-k and
    top-p, so -100 bans a token and +100 all but forces it); one transfer for the batch."""
    rows, cols, values = zip(*((r, t, b) for r, p in enumerate(params) for t, b in p.logit_bias), strict=True)
    dev = logits.device
    index = (torch.tensor(rows, device=dev), torch.tensor(cols, device=dev))
    logits.index_put_(index, torch.tensor(values, device=dev, dtype=logits.dtype), accumulate=True)


def truncate(x: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    """Logits outside each row's top_k (0: all), then outside the smallest set whose probability reaches its
    top_p (within the top_k), set to -inf."""
    vocab = x.shape[-1]
    ordered, order = x.sort(-1, descending=True)
    k = torch.tensor([k or vocab for k in top_k], device=x.device)
    drop = torch.arange(vocab, device=x.device)[None, :] >= k[:, None]
    ordered = ordered.masked_fill(drop, float("-inf"))
    probs = torch.softmax(ordered, -1)
    p = torch.tensor(top_p, device=x.device, dtype=probs.dtype)
    ordered = ordered.masked_fill(probs.cumsum(-1) - probs >= p[:, None], float("-inf"))
    return torch.empty_like(x).scatter_(-1, order, ordered)
