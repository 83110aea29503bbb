"""What a user asks for (`SamplingParams`) and the engine's sequence: token ids, the block ids named from
them, and its block table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agentkv.engine.detokenizer import Detokenizer
from agentkv.engine.grammar import StructuredOutputsParams
from agentkv.kvcache.block_hash import block_key
from agentkv.kvcache.ids import BlockIds
from agentkv.scheduler import Sequence
from agentkv.scheduler.plan import PrefillChunk

# The engine's real limits on a request's numbers: the server's request models take them from here.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts
TOP_K_MAX = 2**31 - 1  # any k at or above the vocabulary means "all"; beyond int64 torch.tensor overflows
MAX_TOKENS_MAX = 2**31 - 1
BIAS_MAX = 100.0  # OpenAI's logit_bias range, [-100, 100] (platform.openai.com API reference, read 2026-12)


@dataclass(slots=True, frozen=True)
class SamplingParams:
    """As vLLM's: n is 1; `stop` strings end the text before them; `seed` makes sampling reproducible;
    `structured_outputs` holds the output to a schema or grammar. Every number is checked here, so nothing out
    of range reaches the engine thread."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    seed: int | None = None
    stop: tuple[str, ...] | list[str] = ()
    stop_token_ids: tuple[int, ...] | list[int] = ()
    ignore_eos: bool = False
    n: int = 1
    structured_outputs: StructuredOutputsParams | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit) before any sampling

    def __post_init__(self) -> None:
        self.check()
        object.__setattr__(self, "stop", tuple([self.stop] if isinstance(self.stop, str) else self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        object.__setattr__(self, "logit_bias", tuple((int(t), float(b)) for t, b in self.logit_bias))

    def check(self) -> None:
        """ValueError naming the first number out of range (the engine checks again at add_request)."""
        seed = self.seed
        checks = [(1 <= self.max_tokens <= MAX_TOKENS_MAX, f"max_tokens must be in [1, {MAX_TOKENS_MAX}]"),
                  (0 <= self.temperature < float("inf"), "temperature must be a finite number >= 0"),
                  (0 < self.top_p <= 1, "top_p must be in (0, 1]"),
                  (0 <= self.top_k <= TOP_K_MAX, f"top_k must be in [0, {TOP_K_MAX}]"),
                  (seed is None or SEED_MIN <= seed <= SEED_MAX, f"seed must be in [{SEED_MIN}, {SEED_MAX}]"),
                  (self.n == 1, "n must be 1 (one completion per request)"),
                  (all(-BIAS_MAX <= b <= BIAS_MAX for _, b in self.logit_bias),
                   f"logit_bias values must be in [-{BIAS_MAX:g}, {BIAS_MAX:g}]")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)


@dataclass(slots=True, eq=False)
class EngineSequence(Sequence):
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""
    ids: BlockIds | None = None
    parent: bytes = b""  # digest of the last full block named (the namespace's before any)
    named: list[int] = field(default_factory=list)  # ids of its full blocks, each holding one reference
    pages: list[int] = field(default_factory=list)  # its block table: physical pages in position order
    window_pages: list[int] = field(default_factory=list)  # sliding layers' pages by block (0: released)
    row: int = -1  # its row in the attention backend's block-table tensor while it runs
    text: str | None = None  # the reply's final text, made once it ends
    detok: Detokenizer | None = None  # its reply's text as it comes; None without a tokenizer
    stop_reason: str | int | None = None  # the stop string or stop token that ended it
    finish_reason: str | None = None
    matcher: Any = None  # its grammar's state (engine/grammar.py) when it has one
    generator: Any = None  # its own torch.Generator when it has a seed (None: the global stream)
    public_blocks: int = 0  # leading blocks named in the public namespace; the rest chain on in `private_root`'s
    private_root: bytes = b""
    # usage: prompt tokens served from the cache at its first admission (a preempted request's re-admission
    # also finds its own generated blocks cached; those are not prompt tokens the client was spared)
    prompt_cached: int = 0
    prompt_cached_per_tier: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @staticmethod
    def create(seq_id: int, request_id: str, prompt: list[int], params: SamplingParams, ids: BlockIds,
               namespace: bytes, block_size: int, public_blocks: int = 0, private_root: bytes = b"") -> EngineSequence:
        seq = EngineSequence(seq_id, len(prompt), np.zeros(0, dtype=np.int64), params.max_tokens, tokens=list(prompt),
                             params=params, request_id=request_id, ids=ids, parent=namespace,
                             public_blocks=public_blocks, private_root=private_root)
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
            if i == self.public_blocks and self.private_root:  # the public prefix ends: the tenant's chain begins
                self.parent = block_key(self.private_root + self.parent, ()).digest
            key = block_key(self.parent, self.tokens[i * block_size : (i + 1) * block_size])
            self.parent = key.digest
            self.named.append(self.ids.name(key))


def rewind(chunk: PrefillChunk, start: int, n: int) -> None:
    """Make a prefill chunk recompute from `start`, before its planned start, as `n` tokens: the cached tokens
    after `start` no longer count as served from the cache (the lower tiers' hits go first)."""
    seq = chunk.seq
    lost = seq.cached - min(seq.cached, start)
    chunk.n = n
    chunk.start = seq.computed = start
    seq.cached -= lost
    for t in range(len(seq.cached_per_tier) - 1, -1, -1):
        take = min(lost, int(seq.cached_per_tier[t]))
        seq.cached_per_tier[t] -= take
        lost -= take
