"""Prompt text whose token blocks reproduce a trace's block ids: equal ids give equal text, so a server's prefix
cache sees exactly the reuse the trace recorded, and different ids give different text.

Each trace block becomes `k = round(block_size × token_scale)` words (one token each, see `alphabet`), drawn by
a hash of (block id, position, seed): no table, so a trace of millions of blocks costs nothing up front. A
request's partial last block takes the first words of its own id's block (so a partial block repeated under one
id repeats too), or unique words where the trace gives it no id. `--token-scale` shrinks every block, the
partial tail and the reply by the same factor, so a small model replays the same reuse at a fraction of the
tokens. Without reuse (`--no-reuse`) every request's blocks are its own: the same traffic with nothing to
hit, the baseline a prefix cache is measured against. A `window` (the server's context less what it adds) cuts
a request that would not fit: its reply to a quarter of the window at most, its prompt to the rest, keeping the
prompt's start (where the reuse is).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agentkv.workload.trace import Trace

UNIQUE = np.int64(1) << 40  # synthetic ids for blocks the trace leaves unnamed: far above any dense trace id
_M1, _M2, _M3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


@dataclass(slots=True)
class Synth:
    trace: Trace
    words: tuple[str, ...]
    token_scale: float = 1.0
    seed: int = 0
    reuse: bool = True  # False: the same token counts with fresh text per request (the no-cache baseline)
    reply_cap: int | None = None  # --max-tokens
    window: int | None = None  # prompt + reply tokens a request may take; None: no limit
    _vocab: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.token_scale <= 1:
            raise ValueError(f"--token-scale must be in (0, 1], got {self.token_scale}")
        self._vocab = np.array(self.words, dtype=object)

    @property
    def block_tokens(self) -> int:
        """Tokens each trace block becomes."""
        return max(1, round(self.trace.block_size * self.token_scale))

    def sizes(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(prompt, reply) tokens of requests `idx` as sent: scaled, capped, cut to the window."""
        t, bs, k = self.trace, self.trace.block_size, self.block_tokens
        n_in = t.input_tokens[idx]
        if t.has_block_ids:
            n_full, tail = np.divmod(n_in, bs)
            prompt = np.minimum(n_full, t.blocks_per_request[idx]) * k
            prompt += np.where(tail > 0, np.minimum(k, np.round(tail * self.token_scale)), 0).astype(np.int64)
        else:
            prompt = np.maximum(1, np.round(n_in * self.token_scale)).astype(np.int64)
        reply = np.maximum(1, np.round(t.output_tokens[idx] * self.token_scale)).astype(np.int64)
        if self.reply_cap:
            reply = np.minimum(reply, self.reply_cap)
        if self.window:
            over = prompt + reply > self.window
            reply = np.where(over, np.minimum(reply, max(1, self.window // 4)), reply)
            prompt = np.where(over, np.maximum(self.window - reply, 1), prompt)
        return prompt, reply

    def prompt_words(self, i: int) -> np.ndarray:
        """Request i's prompt as alphabet indices, one per token."""
        t, bs, k = self.trace, self.trace.block_size, self.block_tokens
        n_in = int(t.input_tokens[i])
        n_full, tail = divmod(n_in, bs) if t.has_block_ids else (0, 0)
        ids = t.blocks(i) if t.has_block_ids else np.zeros(0, dtype=np.int64)
        if not self.reuse:
            ids = ids + UNIQUE * (i + 2)
        parts = [self._block_words(ids[:n_full], k).ravel()]
        if not t.has_block_ids:  # lengths only (Azure): every prompt is new text
            parts.append(self._block_words(UNIQUE + i * 2**20 + np.arange(1), max(1, round(n_in * self.token_scale)))[0])
        elif tail and (n_tail := min(k, round(tail * self.token_scale))):
            tail_id = ids[n_full] if len(ids) > n_full else UNIQUE + i
            parts.append(self._block_words(np.array([tail_id]), k)[0, :n_tail])
        words = np.concatenate(parts)
        return words[: int(self.sizes(np.array([i]))[0][0])] if self.window else words

    def max_tokens(self, i: int) -> int:
        """The reply length to ask for: the trace's, scaled like the prompt, at least 1."""
        return int(self.sizes(np.array([i]))[1][0])

    def text(self, words: np.ndarray) -> str:
        return " ".join(self._vocab[words])

    def _block_words(self, ids: np.ndarray, k: int) -> np.ndarray:
        """[len(ids), k] alphabet indices: a splitmix64 hash of (id, position, seed), so equal ids agree."""
        x = np.asarray(ids, dtype=np.int64).astype(np.uint64)[:, None] * np.uint64(k) + np.arange(k, dtype=np.uint64)
        x = x * _M1 + np.uint64(self.seed)
        x ^= x >> np.uint64(30)
        x *= _M2
        x ^= x >> np.uint64(27)
        x *= _M3
        x ^= x >> np.uint64(31)
        return (x % np.uint64(len(self.words))).astype(np.int64)
