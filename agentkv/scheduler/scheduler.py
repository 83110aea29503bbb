"""Continuous batching with chunked prefill under a token budget, over the KV cache policy core.

Each step (as vLLM's v1 scheduler does): running sequences first, in admission order (a decode costs one
token of budget, an unfinished prefill as much as is left of it), then waiting sequences first-come
first-served while budget and KV room last. Admission is `KVCache.acquire`: the cached prefix is pinned
(lower-tier hits are promoted, moves returned in the batch) and blocks reserved for the rest of the prompt.
A decode that needs a new block and finds no room preempts the most recently admitted sequence: its blocks
are released to the cache (where they stay cached, demoted to a lower tier if one exists and the policy
chooses so) and it waits to be recomputed, its generated tokens now part of its prompt.

The engine runs `schedule` → forward pass → `postprocess`; the simulator runs the same calls and prices the
batch with the step-cost model instead of a forward pass.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agentkv.kvcache.cache import KVCache, MoveBatch
from agentkv.kvcache.policy import AccessContext
from agentkv.scheduler.batch import Batch, PrefillChunk
from agentkv.scheduler.sequence import Sequence, Status


@dataclass(slots=True, frozen=True)
class SchedulerConfig:
    block_size: int = 64
    max_batched_tokens: int = 8192
    max_num_seqs: int = 256
    prefix_cache: bool = True  # off: nothing is looked up or named; every block is private to its request


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class Scheduler:
    def __init__(self, config: SchedulerConfig, cache: KVCache,
                 on_commit: Callable[[Sequence, int, np.ndarray], None] | None = None,
                 on_release: Callable[[Sequence], None] | None = None) -> None:
        """on_commit(seq, first block, ids) and on_release(seq) let the engine move its tensors in step with the
        cache's accounts (the simulator has no tensors and passes neither)."""
        self.cfg = config
        self.cache = cache
        self.on_commit = on_commit
        self.on_release = on_release
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0
        self._blocked_at = -1  # cache.releases when the head of the queue last found no room
        self.commit_moves: list[MoveBatch] = []  # write-through copies made by commits: the engine drains them

    # ---- queue ---------------------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        if blocks_for(seq.prompt_len + seq.max_tokens, self.cfg.block_size) > self.cache.capacity[0]:
            raise ValueError(f"request {seq.seq_id}: {seq.prompt_len + seq.max_tokens} tokens can never fit in "
                             f"{self.cache.capacity[0] * self.cfg.block_size} tokens of GPU KV")
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def abort(self, seq_id: int, now: float = 0.0) -> bool:
        """Cancel a request wherever it is; its KV is released. False if it is not here."""
        for seq in self.waiting:
            if seq.seq_id == seq_id:
                self.waiting.remove(seq)
                seq.status = Status.FINISHED
                return True
        for seq in self.running:
            if seq.seq_id == seq_id:
                self._release(seq, now)
                self.running.remove(seq)
                seq.status = Status.FINISHED
                return True
        return False

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- one step ------------------------------------------------------------------------------------------
    def schedule(self, now: float) -> Batch:
        batch = Batch(moves=self.cache.tick(now))  # the policy's prefetches first
        budget = self.cfg.max_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if seq.in_prefill:
                n = min(seq.target - seq.computed, budget)
                batch.prefills.append(PrefillChunk(seq, seq.computed, n))
                budget -= n
                i += 1
                continue
            if not self._room_for_decode(seq, batch, now):
                break  # seq itself was preempted; everything after it already was
            batch.decodes.append(seq)
            budget -= 1
            i += 1
        while self.waiting and budget > 0 and len(self.running) < self.cfg.max_num_seqs:
            if self._blocked_at == self.cache.releases:
                break  # nothing was released since the head found no room: it still would not fit
            seq = self.waiting[0]
            if not self._admit(seq, batch, now):
                self._blocked_at = self.cache.releases
                break  # first come, first served: the head waits for room
            self.waiting.popleft()
            self.running.append(seq)
            n = min(seq.target - seq.computed, budget)
            batch.prefills.append(PrefillChunk(seq, seq.computed, n))
            budget -= n
        return batch

    def postprocess(self, batch: Batch, now: float) -> list[Sequence]:
        """Account a finished step: KV written, blocks named, tokens sampled. Returns the sequences that finished."""
        for chunk in batch.prefills:
            seq = chunk.seq
            seq.computed += chunk.n
            self._commit(seq, now)
            if seq.computed >= seq.target:
                seq.generated += 1  # the prefill's last position samples a token
                if seq.first_token_time != seq.first_token_time:
                    seq.first_token_time = now
        for seq in batch.decodes:
            seq.computed += 1
            seq.generated += 1
            self._commit(seq, now)
        finished = [s for s in self.running if not s.in_prefill and s.done]
        for seq in finished:
            self._release(seq, now)
            seq.status = Status.FINISHED
            seq.finish_time = now
        if finished:
            self.running = [s for s in self.running if s.status is not Status.FINISHED]
        return finished

    # ---- fast-forward for the simulator ----------------------------------------------------------------------
    def decode_leap(self) -> int:
        """How many decode-only steps can run with this exact composition (nobody finishes, needs a block,
        or could be admitted meanwhile). The simulator advances them in one go."""
        if not self.running or any(s.in_prefill for s in self.running):
            return 0
        if self.waiting and self._blocked_at != self.cache.releases:
            return 0  # the head of the queue might be admitted at the next step
        bs = self.cfg.block_size
        return max(0, min(min(s.max_tokens - s.generated - 1, s.blocks_held * bs - s.computed)
                          for s in self.running))

    def advance_decodes(self, k: int) -> None:
        for seq in self.running:
            seq.computed += k
            seq.generated += k

    # ---- mechanics -------------------------------------------------------------------------------------------
    def _ctx(self, seq: Sequence, now: float) -> AccessContext:
        return AccessContext(now, session=seq.session, tenant=seq.tenant, request=seq.seq_id, finish=seq.finish,
                             output_tokens=seq.generated)

    def _admit(self, seq: Sequence, batch: Batch, now: float) -> bool:
        bs = self.cfg.block_size
        target = seq.prompt_len + seq.generated  # after a preemption, what it generated is recomputed too
        n_blocks = blocks_for(target, bs)
        ids = seq.prefix_ids(bs) if self.cfg.prefix_cache else seq.block_ids[:0]
        grant = self.cache.acquire(seq.seq_id, ids, n_blocks, self._ctx(seq, now))
        if grant is None:
            return False
        hit = min(grant.hit_blocks * bs, target - 1)  # the last token is always computed: it yields logits
        per_tier = grant.hits_per_tier * bs
        if grant.hit_blocks:
            per_tier[int(grant.hit_tiers[-1])] -= grant.hit_blocks * bs - hit
        seq.status = Status.RUNNING
        seq.target = target
        seq.computed = seq.cached = hit
        seq.cached_per_tier = per_tier
        seq.committed = grant.hit_blocks
        seq.blocks_held = n_blocks
        batch.moves.extend(grant.moves)
        return True

    def _room_for_decode(self, seq: Sequence, batch: Batch, now: float) -> bool:
        """Make sure the token this decode writes has a block; preempt from the back until it does."""
        need = blocks_for(seq.computed + 1, self.cfg.block_size) - seq.blocks_held
        while need > 0:
            moves = self.cache.reserve(seq.seq_id, need, now)
            if moves is not None:
                batch.moves.extend(moves)
                seq.blocks_held += need
                return True
            victim = self.running[-1]
            self._preempt(victim, batch, now)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence, batch: Batch, now: float) -> None:
        self._release(seq, now)
        self.running.remove(seq)
        seq.status = Status.WAITING
        seq.preemptions += 1
        seq.computed = 0
        self.preemptions += 1
        batch.preempted.append(seq)
        self.waiting.appendleft(seq)

    def _commit(self, seq: Sequence, now: float) -> None:
        if not self.cfg.prefix_cache:
            return
        ids = seq.name_blocks(seq.computed // self.cfg.block_size, self.cfg.block_size)
        if len(ids):
            self.commit_moves.extend(self.cache.commit(seq.seq_id, ids, now))
            if self.on_commit:
                self.on_commit(seq, seq.committed, ids)
            seq.committed += len(ids)

    def _release(self, seq: Sequence, now: float) -> None:
        self.cache.release(seq.seq_id, self._ctx(seq, now))
        if self.on_release:
            self.on_release(seq)
        seq.blocks_held = 0
