"""The policies, by name. Online: lru (baseline), lfu, cost, agent. Offline reference: belady."""

from __future__ import annotations

from agentkv.kvcache.policies.agent import AgentAware
from agentkv.kvcache.policies.belady import Belady, next_uses
from agentkv.kvcache.policies.cost import CostAware
from agentkv.kvcache.policies.lfu import LFU
from agentkv.kvcache.policies.lru import LRU

ONLINE = ("lru", "lfu", "cost", "agent")
OFFLINE = ("belady", "infinite")

__all__ = ["LFU", "LRU", "OFFLINE", "ONLINE", "AgentAware", "Belady", "CostAware", "next_uses"]
