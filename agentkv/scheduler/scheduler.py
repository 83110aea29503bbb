"""Continuous batching with chunked prefill under a token budget, over the KV cache policy core.

Each step (as vLLM's v1 scheduler does): running sequences first, in admission order (a decode costs one
token of budget, an unfinished prefill as much as is left of it), then waiting sequences first-come
first-served while budget and KV room last. Admission is `KVCache.acquire`: the cached prefix is pinned
(lower-tier hits are promoted) and blocks reserved for the rest of the prompt.
A decode that needs a new block and finds no room preempts the most recently admitted sequence: its blocks
are released to the cache (where they stay cached, demoted to a lower tier if one exists and the policy
chooses so) and it waits to be recomputed, its generated tokens now part of its prompt.

The engine runs `schedule` → carry out the plan → forward pass → `postprocess`; the simulator runs the same
calls and prices the plan with the step-cost model instead. Every decision that touches KV memory is an
operation appended, in order, to the plan under construction (see `plan.py`); `postprocess`'s own (names,
releases) open the next step's plan.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from agentkv.kvcache.cache import AtHand, KVCache
from agentkv.kvcache.policy import AccessContext
from agentkv.scheduler.plan import Allocate, Free, Name, Op, PrefillChunk, StepPlan
from agentkv.scheduler.sequence import Sequence, Status


@dataclass(slots=True, frozen=True)
class SchedulerConfig:
    block_size: int = 64
    max_batched_tokens: int = 8192
    max_num_seqs: int = 256
    prefix_cache: bool = True  # off: nothing is looked up or named; every block is private to its request
    # blocks' worth of bounded state each running sequence holds beside its pages (a sliding window's or a
    # linear layer's state, `kvcache.sizing.state_bytes`): reserved at admission, freed with the sequence
    state_blocks: int = 0


def blocks_for(tokens: int, block_size: int) -> int:
    return -(-tokens // block_size)


class Scheduler:
    def __init__(self, config: SchedulerConfig, cache: KVCache) -> None:
        self.cfg = config
        self.cache = cache
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0
        self._blocked_at = -1  # cache.releases when the head of the queue last found no room
        self._ops: list[Op] = []  # the plan under construction: postprocess's operations open the next step's
        self.at_hand: AtHand | None = None  # which lower-tier blocks a prefetch can promote now (None: all)

    # ---- queue ---------------------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        if blocks_for(seq.prompt_len + seq.max_tokens, self.cfg.block_size) + self.cfg.state_blocks > \
                self.cache.capacity[0]:
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

    @property
    def head_blocked(self) -> bool:
        """The head of the queue found no room and nothing was released since: it would not fit now either."""
        return self._blocked_at == self.cache.releases

    # ---- one step ------------------------------------------------------------------------------------------
    def schedule(self, now: float) -> StepPlan:
        batch = StepPlan(ops=self._ops)
        self._ops = batch.ops
        self._ops.extend(self.cache.tick(now, self.at_hand))  # the policy's prefetches first
        budget, bs = self.cfg.max_batched_tokens, self.cfg.block_size
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            if seq.in_prefill:
                n = min(seq.target - seq.computed, budget)
                batch.prefills.append(PrefillChunk(seq, seq.computed, n))
                budget -= n
                i += 1
                continue
            if seq.computed >= seq.blocks_held * bs and not self._room_for_decode(seq, batch, now):
                break  # seq itself was preempted; everything after it already was (else its block had room)
            batch.decodes.append(seq)
            budget -= 1
            i += 1
        while self.waiting and budget > 0 and len(self.running) < self.cfg.max_num_seqs:
            if self.head_blocked:
                break  # nothing was released since the head found no room: it still would not fit
            seq = next((q for q in self.waiting if q.ready is None or q.ready()), None)
            if seq is None:
                break  # every waiting request still has its prefix in flight from a slow tier
            if not self._admit(seq, batch, now):
                self._blocked_at = self.cache.releases
                break  # first come, first served (among those whose prefix is at hand): it waits for room
            self.waiting.remove(seq)
            self.running.append(seq)
            n = min(seq.target - seq.computed, budget)
            batch.prefills.append(PrefillChunk(seq, seq.computed, n))
            budget -= n
        self._ops = []
        return batch

    def postprocess(self, batch: StepPlan, now: float) -> list[Sequence]:
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

    # ---- mechanics -------------------------------------------------------------------------------------------
    def _ctx(self, seq: Sequence, now: float) -> AccessContext:
        return AccessContext(now, session=seq.session, tenant=seq.tenant, request=seq.seq_id, finish=seq.finish,
                             output_tokens=seq.generated)

    def _admit(self, seq: Sequence, batch: StepPlan, now: float) -> bool:
        bs = self.cfg.block_size
        target = seq.prompt_len + seq.generated  # after a preemption, what it generated is recomputed too
        n_blocks = blocks_for(target, bs)
        ids = seq.prefix_ids(bs) if self.cfg.prefix_cache else seq.block_ids[:0]
        grant = self.cache.acquire(seq.seq_id, ids, n_blocks + self.cfg.state_blocks, self._ctx(seq, now))
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
        self._ops.extend(grant.moves)
        self._ops.append(Allocate(seq, ids[: grant.hit_blocks], n_blocks - grant.hit_blocks, admission=True))
        return True

    def _room_for_decode(self, seq: Sequence, batch: StepPlan, now: float) -> bool:
        """Make sure the token this decode writes has a block; preempt from the back until it does."""
        need = blocks_for(seq.computed + 1, self.cfg.block_size) - seq.blocks_held
        while need > 0:
            moves = self.cache.reserve(seq.seq_id, need, now)
            if moves is not None:
                self._ops.extend(moves)
                self._ops.append(Allocate(seq, seq.block_ids[:0], need))
                seq.blocks_held += need
                return True
            victim = self.running[-1]
            self._preempt(victim, batch, now)
            if victim is seq:
                return False
        return True

    def _preempt(self, seq: Sequence, batch: StepPlan, now: float) -> None:
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
            self._ops.extend(self.cache.commit(seq.seq_id, ids, now))
            self._ops.append(Name(seq, seq.committed, ids))
            seq.committed += len(ids)

    def _release(self, seq: Sequence, now: float) -> None:
        self.cache.release(seq.seq_id, self._ctx(seq, now))
        self._ops.append(Free(seq))
        seq.blocks_held = 0
