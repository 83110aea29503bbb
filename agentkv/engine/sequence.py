"""What a user asks for (`SamplingParams`) and the engine's sequence: token ids, and block ids named from them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agentkv.kvcache.block_hash import chain_hash
from agentkv.kvcache.ids import BlockIds
from agentkv.scheduler import Sequence


@dataclass(slots=True, frozen=True)
class SamplingParams:
    max_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclass(slots=True, eq=False)
class EngineSequence(Sequence):
    params: SamplingParams = field(default_factory=SamplingParams)
    ids: BlockIds | None = None
    salt: int = 0
    last_hash: int = 0  # chained hash of the last full block named (the salt before any)
    named: list[int] = field(default_factory=list)  # their verified dense ids
    text: str = ""
    finish_reason: str = ""

    @staticmethod
    def create(seq_id: int, prompt: list[int], params: SamplingParams, ids: BlockIds, salt: int,
               block_size: int) -> EngineSequence:
        seq = EngineSequence(seq_id, len(prompt), np.zeros(0, dtype=np.int64), params.max_tokens, tokens=list(prompt),
                             params=params, ids=ids, salt=salt, last_hash=salt)
        seq._name_upto(len(prompt) // block_size, block_size)
        seq.block_ids = seq.block_range(0, len(seq.named))
        return seq

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[self.prompt_len :] if self.tokens else []

    def name_blocks(self, upto: int, block_size: int) -> np.ndarray:
        """Ids of full blocks [committed, upto): the prompt's named at creation, generated ones named now."""
        self._name_upto(upto, block_size)
        return self.block_range(self.committed, upto)

    def prefix_ids(self, block_size: int) -> np.ndarray:
        """Ids of every full block of its context (after a preemption, generated blocks too: they may be cached)."""
        upto = self.length // block_size
        self._name_upto(upto, block_size)
        return self.block_range(0, upto)

    def block_range(self, first: int, last: int) -> np.ndarray:
        return np.asarray(self.named[first:last], dtype=np.int64)

    def _name_upto(self, upto: int, block_size: int) -> None:
        assert self.tokens is not None and self.ids is not None
        while len(self.named) < upto:
            i = len(self.named)
            block = self.tokens[i * block_size : (i + 1) * block_size]
            self.last_hash = chain_hash(self.last_hash, block)
            self.named.append(self.ids.name(self.last_hash, self.named[-1] if self.named else None, self.salt, block))
