"""One scheduler step as data: the ordered operations on KV memory, then the batch to compute.

The engine's page pool is the only code that carries `ops` out (in order); the simulator prices the very same
plan (every tier move at its link's bandwidth) and ignores the rest. Operations:
- `MoveBatch` (the policy core's): promote / demote / write-through / drop blocks between tiers;
- `Allocate`: a sequence's block table gets its cached prefix `hits` (resident in tier 0 by now) and `n`
  fresh pages;
- `Name`: blocks `first..` of a sequence now hold `ids` (their KV is written): they may be shared;
- `Free`: the sequence let go (finished, aborted or preempted): its unnamed pages return to the pool.
What a step's accounting decides after the forward pass (names, releases, write-through copies) opens the
next step's plan, so nothing reaches the pool through any other channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agentkv.kvcache.cache import MoveBatch
from agentkv.scheduler.sequence import Sequence


@dataclass(slots=True)
class Allocate:
    seq: Sequence
    hits: np.ndarray
    n: int
    admission: bool = False  # the request's first pages (else: more pages for a running request)


@dataclass(slots=True)
class Name:
    seq: Sequence
    first: int
    ids: np.ndarray


@dataclass(slots=True)
class Free:
    seq: Sequence


Op = MoveBatch | Allocate | Name | Free


@dataclass(slots=True)
class PrefillChunk:
    seq: Sequence
    start: int  # tokens already in the context (cached or computed before this chunk)
    n: int  # new tokens this step


@dataclass(slots=True)
class StepPlan:
    ops: list[Op] = field(default_factory=list)
    prefills: list[PrefillChunk] = field(default_factory=list)
    decodes: list[Sequence] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def moves(self) -> list[MoveBatch]:
        return [op for op in self.ops if isinstance(op, MoveBatch)]

    @property
    def num_tokens(self) -> int:
        return sum(c.n for c in self.prefills) + len(self.decodes)

    @property
    def empty(self) -> bool:
        return not self.prefills and not self.decodes
