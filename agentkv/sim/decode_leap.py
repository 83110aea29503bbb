"""A decode-only stretch as one event: the steps a replica runs while its batch is all decodes and nothing is due.

When every running sequence is decoding and no waiting request could be admitted, every step until the first that
finishes a sequence has the same composition, so it is priced once at mid-stretch context and run as one event:
through that finishing step (its accounting, the finish included, runs at the leap's end, as the scheduler's own
postprocess of a decode step) or to the first step that needs a block the GPU tier cannot reserve now (a leap does
not evict: the cache stays as a step-by-step run leaves it). Arrivals elsewhere do not end it; one routed to the
leaping replica cuts it at the step in progress, where a step-by-step run would admit it, and the router sees the
steps done so far (`apply`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from agentkv.scheduler import PrefillChunk, Scheduler, StepPlan
from agentkv.scheduler.scheduler import blocks_for
from agentkv.sim.pricing import attribute
from agentkv.sim.stepcost import Deployment, StepCost, StepShape, step_cost

MIN_STEPS = 2  # fewer steps ahead: an ordinary step costs as much


@dataclass(slots=True)
class DecodeLeap:
    """`steps` decode steps of `per_step` seconds from `start`, priced at mid-leap context (`cost`, `ahead` steps
    past the start); `applied` of them applied so far; `event` names the step completion that ends it (a cut
    leaves the earlier one stale); `finishes`: its last step finishes a sequence (applied at landing by the
    scheduler's accounting of a decode step)."""

    start: float
    per_step: float
    steps: int
    cost: StepCost
    ahead: int
    finishes: bool
    event: int = 0
    applied: int = 0

    @property
    def end(self) -> float:
        return self.start + self.steps * self.per_step

    def apply(self, sched: Scheduler, until: float, account: Callable[[PrefillChunk, StepCost], None]) -> None:
        """Apply to the running sequences the steps that have ended by `until` (as `PrefillLeap.apply`; a decode
        step is accounted when the leap lands, so `account` is not called)."""
        self._advance(sched, min(self.steps - self.finishes, int((until - self.start) / self.per_step)))

    def cut(self, now: float) -> float | None:
        """A request joined the replica: end with the step in progress. Its new end, None where it ends then anyway."""
        done = min(self.steps, max(self.applied, math.ceil((now - self.start) / self.per_step)))
        if done >= self.steps:
            return None
        self.steps, self.finishes = done, False
        return self.end

    def land(self, sched: Scheduler, account: Callable[[PrefillChunk, StepCost], None],
             totals: dict) -> tuple[float, StepPlan | None]:
        """The leap ended: its steps applied, priced and attributed. Returns (the replica's busy seconds, the
        finishing step for the scheduler to account, or None)."""
        running = sched.running
        attribute(self.cost, [], running, totals, steps=self.steps, ahead=self.ahead - self.applied)
        self._advance(sched, self.steps - self.finishes)  # a finishing step: the scheduler's accounting
        totals["steps"] += self.steps
        totals["decode_tokens"] += self.steps * len(running)
        return self.steps * self.per_step, StepPlan(decodes=list(running)) if self.finishes else None

    def _advance(self, sched: Scheduler, done: int) -> None:
        """The running sequences through the leap's first `done` steps (those not applied yet)."""
        if done > self.applied:
            for q in sched.running:
                q.computed += done - self.applied
                q.generated += done - self.applied
            self.applied = done


def decode_leap(sched: Scheduler, now: float, d: Deployment) -> DecodeLeap | None:
    """The leap from `now` over the decode-only steps through the first that finishes a sequence, or to the one
    that needs a block; None where a step must be scheduled or fewer than MIN_STEPS would be leapt."""
    to_finish, fits = _stretch(sched)
    k = _reserve_ahead(sched, to_finish, fits, now)
    if k < MIN_STEPS:
        return None
    mid = k // 2
    cost = step_cost(StepShape(decodes=tuple(q.computed + 1 + mid for q in sched.running)), d)
    return DecodeLeap(now, cost.total, k, cost, mid, finishes=k == to_finish)


def _stretch(sched: Scheduler) -> tuple[int, int]:
    """(decode-only steps through the first that finishes a sequence, of those how many fit the blocks held)
    with this exact composition (nobody could be admitted meanwhile); (0, 0) where a step must be scheduled."""
    if not sched.running or any(s.in_prefill for s in sched.running):
        return 0, 0
    if sched.waiting and not sched.head_blocked:
        return 0, 0  # the head of the queue might be admitted at the next step
    bs = sched.cfg.block_size
    to_finish = max(0, min(s.max_tokens - s.generated for s in sched.running))
    return to_finish, min(to_finish, min(s.blocks_held * bs - s.computed for s in sched.running))


def _reserve_ahead(sched: Scheduler, to_finish: int, fits: int, now: float) -> int:
    """Steps a leap can run: to the first finish, with the blocks its decodes will write reserved now where the
    GPU tier has them free (no eviction: the cache is as a step-by-step run leaves it); else to the first block
    boundary."""
    if to_finish <= fits:
        return fits
    bs, running = sched.cfg.block_size, sched.running
    need = [max(blocks_for(q.computed + to_finish, bs) - q.blocks_held, 0) for q in running]
    if sum(need) > sched.cache.free_blocks(0):
        return fits
    for q, n in zip(running, need, strict=True):
        if n:
            sched.cache.reserve(q.seq_id, n, now)
            q.blocks_held += n
    return to_finish
