"""The policies, by name: lru (the baseline), lfu, cost, agent (online); belady, infinite (offline references)."""

from __future__ import annotations

import numpy as np

from agentkv.catalog import ModelSpec
from agentkv.kvcache.policies.agent import AgentAware
from agentkv.kvcache.policies.belady import Belady, next_uses
from agentkv.kvcache.policies.cost import CostAware
from agentkv.kvcache.policies.lfu import LFU
from agentkv.kvcache.policies.lru import LRU
from agentkv.kvcache.policy import Policy

__all__ = ["LFU", "LRU", "NAMES", "AgentAware", "Belady", "CostAware", "make_policy", "next_uses"]

NAMES = ("lru", "lfu", "cost", "agent", "belady", "infinite")


def make_policy(name: str, stream: list[np.ndarray] | None = None, model: ModelSpec | None = None,
                block_size: int = 64) -> Policy:
    match name:
        case "lru" | "infinite":
            return LRU()
        case "lfu":
            return LFU()
        case "cost":
            if model is None:
                raise ValueError("the cost-aware policy needs a model (its recompute cost)")
            return CostAware(model, block_size)
        case "agent":
            return AgentAware()
        case "belady":
            if stream is None:
                raise ValueError("Belady needs the replay's reference stream")
            return Belady(next_uses(stream))
    raise ValueError(f"unknown policy '{name}' (policies: {', '.join(NAMES)})")
