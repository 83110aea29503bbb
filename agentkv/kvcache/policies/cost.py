"""Cost-aware: keep the blocks whose hits save the most prefill compute per byte held (GreedyDual-Size-Freq.).

Recomputing a block costs its linear layers plus attention over everything before it, so a block deep in a
long context is dearer than one near the start: cost(d) = 1 + α·(d + ½)·block_size in units of one block's
linear FLOPs, α = attention FLOPs per token per context position / linear FLOPs per token. A block's value is
uses × cost / bytes (bytes are equal within a tier); the cache's age rises to each evicted key, as in GDSF.
Chain-monotone keys mean a prefix is worth at least what its deepest cached continuation is.
"""

from __future__ import annotations

import numpy as np

from agentkv.catalog import ModelSpec
from agentkv.kvcache.policy import AccessContext, Policy
from agentkv.kvcache.sizing import GROWING


def attention_to_linear_ratio(model: ModelSpec) -> float:
    """α: attention FLOPs one token spends per earlier token, over its linear-layer FLOPs. Only layers that
    attend to the whole context densely (full, MLA, compressed: per entry) make a deep block dearer."""
    attn = sum(g.flops_per_pair(model) / g.ratio for g in model.groups if g.kind in GROWING and not g.top_k)
    return attn / (2.0 * model.params_active)


class CostAware(Policy):
    name = "cost"

    def __init__(self, model: ModelSpec, block_size: int) -> None:
        self.alpha = attention_to_linear_ratio(model)
        self.block_size = block_size
        self.count = np.zeros(0, dtype=np.float64)
        self.age = 0.0

    def grow(self, n_slots: int) -> None:
        self.count = np.concatenate([self.count, np.zeros(n_slots - len(self.count))])

    def recompute_cost(self, depth: np.ndarray) -> np.ndarray:
        return 1.0 + self.alpha * (depth + 0.5) * self.block_size

    def forget(self, slots: np.ndarray) -> None:
        self.count[slots] = 0

    def on_release(self, slots: np.ndarray, depth: np.ndarray, ctx: AccessContext) -> np.ndarray:
        self.count[slots] += 1
        return self.age + self.count[slots] * self.recompute_cost(depth.astype(np.float64))

    def on_evict(self, keys: np.ndarray) -> None:
        if len(keys):
            self.age = max(self.age, float(np.max(keys)))
