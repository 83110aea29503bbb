"""A request as the scheduler tracks it: its prompt's block ids and how far prefill and decode have got."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import numpy as np


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Sequence:
    """`block_ids` name the prompt's full blocks. `tokens` (the engine's) holds prompt + generated token ids;
    the simulator has none and knows `max_tokens` from the trace. Block naming for generated tokens is the
    engine's business (`name_blocks`)."""

    seq_id: int
    prompt_len: int
    block_ids: np.ndarray
    max_tokens: int
    arrival: float = 0.0
    session: int = -1
    tenant: int = 0
    finish: int = 0  # how the reply ended (FINISH_*), known to the engine when it ends
    tokens: list[int] | None = None
    status: Status = Status.WAITING
    # progress
    target: int = 0  # tokens to prefill before decoding: the prompt, plus what was generated before a preemption
    computed: int = 0  # tokens whose KV exists (cached prefix + computed)
    generated: int = 0
    cached: int = 0  # prompt tokens served from the cache at the last admission
    cached_per_tier: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    committed: int = 0  # full blocks named in the cache
    blocks_held: int = 0  # blocks the cache holds for it (named + reserved)
    preemptions: int = 0
    first_token_time: float = float("nan")
    finish_time: float = float("nan")
    stop: bool = False  # the engine saw a stop token or string
    ready: Callable[[], bool] | None = None  # engine: its cached prefix has arrived from slower tiers

    @property
    def length(self) -> int:
        """Tokens in the context now: prompt plus what was generated."""
        return self.prompt_len + self.generated

    @property
    def in_prefill(self) -> bool:
        return self.computed < self.target

    @property
    def done(self) -> bool:
        return self.stop or self.generated >= self.max_tokens

    def prefix_ids(self, block_size: int) -> np.ndarray:
        """Ids of the full blocks to look up at admission (the prompt's; the engine adds generated ones)."""
        return self.block_ids

    def name_blocks(self, upto: int, block_size: int) -> np.ndarray:
        """Ids of full blocks [committed, upto) if they can be named: the prompt's blocks from its ids. The
        engine overrides naming for generated tokens by passing `tokens`; the simulator cannot name them."""
        return self.block_ids[self.committed : min(upto, len(self.block_ids))]
