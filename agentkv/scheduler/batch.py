"""One scheduler step: what to prefill, what to decode, who was preempted and which KV moves come first.
The engine executes it; the simulator prices it with the step-cost model."""

from __future__ import annotations

from dataclasses import dataclass, field

from agentkv.kvcache.cache import MoveBatch
from agentkv.scheduler.sequence import Sequence


@dataclass(slots=True)
class PrefillChunk:
    seq: Sequence
    start: int  # tokens already in the context (cached or computed before this chunk)
    n: int  # new tokens this step


@dataclass(slots=True)
class Batch:
    prefills: list[PrefillChunk] = field(default_factory=list)
    decodes: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    moves: list[MoveBatch] = field(default_factory=list)  # to perform before the step's compute

    @property
    def num_tokens(self) -> int:
        return sum(c.n for c in self.prefills) + len(self.decodes)

    @property
    def empty(self) -> bool:
        return not self.prefills and not self.decodes
