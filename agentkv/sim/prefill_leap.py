"""A long prompt's full chunks as one event: the steps a replica spends on the sequence at the head of its batch.

`Scheduler.schedule` serves running sequences in admission order, a prefill taking as much of the step's token
budget as it has left. While the first running sequence has more than a whole budget of prompt left, every step is
one full chunk of it and nothing else: no decode behind it and no waiting request gets any budget, and nothing
those could do changes that (an arrival only queues). So the steps up to its last chunk are known when the first
of them starts; without a prefix cache (a whole prompt computed in 8,192-token chunks) they are most of a
simulation's steps. The leap prices each chunk as its own prefill-only step (`pricing.prefill_cost`, remembered),
applies each (`Scheduler.postprocess`: its KV counted, its blocks named) and accounts it (`pricing.price_step`) as
its end passes, and leaves the last chunk to an ordinary step, where a waiting request can be admitted beside it
and the first token is sampled. The step-by-step run is the same step for step, on two conditions that keep tier
moves out of these steps: no write-through copies (a commit's copy is priced in the next step) and a policy that
never prefetches (a step's start can promote blocks).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate

from agentkv.kvcache.policy import Policy
from agentkv.scheduler import PrefillChunk, Scheduler, StepPlan
from agentkv.sim.stepcost import StepCost

MIN_CHUNKS = 2  # fewer full chunks ahead: the ordinary steps cost as much


@dataclass(slots=True)
class PrefillLeap:
    chunks: list[PrefillChunk]  # each a step of its own, in order
    costs: list[StepCost]  # each chunk's step
    ends: list[float]  # when each chunk's step ends
    event: int = 0  # the step completion that ends the leap (as `DecodeLeap.event`)
    applied: int = 0  # chunks applied so far

    @property
    def end(self) -> float:
        return self.ends[-1]

    def apply(self, sched: Scheduler, until: float, account: Callable[[PrefillChunk, StepCost], None]) -> None:
        """Apply the chunks whose steps end before `until` (an arrival at a step's end comes first, as in a
        step-by-step run; the leap's end applies the rest with `until` infinite): each step accounted in order,
        then their KV counted and named at once (`Scheduler.postprocess` of one chunk spanning them: the same
        blocks, no tier moves, no first token)."""
        first, done = self.applied, bisect_left(self.ends, until, lo=self.applied)
        if done == first:
            return
        for k in range(first, done):
            account(self.chunks[k], self.costs[k])
        head, start = self.chunks[first].seq, self.chunks[first].start
        sched.postprocess(StepPlan(prefills=[PrefillChunk(head, start, self.chunks[done - 1].start
                                                          + self.chunks[done - 1].n - start)]), self.ends[done - 1])
        self.applied = done

    def cut(self, now: float) -> None:
        """A request joined the replica: the chunks leave it no budget, so it queues and the leap goes on."""

    def land(self, sched: Scheduler, account: Callable[[PrefillChunk, StepCost], None],
             totals: dict) -> tuple[float, None]:
        """The leap ended: the rest of its chunks applied (their steps' seconds are in `account`)."""
        self.apply(sched, math.inf, account)
        return 0.0, None


def prefill_leap(sched: Scheduler, now: float, cost_of: Callable[[PrefillChunk], StepCost]) -> PrefillLeap | None:
    """The leap over the head sequence's full chunks from `now`, or None where the next steps are not all such
    chunks (or too few). `cost_of(chunk)`: its step's price."""
    cache = sched.cache
    if not sched.running or cache.write_through or type(cache.policy).prefetch is not Policy.prefetch:
        return None
    head, budget = sched.running[0], sched.cfg.max_batched_tokens
    full = (head.target - head.computed - 1) // budget  # the last chunk (1 to budget tokens) is an ordinary step
    if not head.in_prefill or full < MIN_CHUNKS:
        return None
    chunks = [PrefillChunk(head, head.computed + k * budget, budget) for k in range(full)]
    costs = [cost_of(chunk) for chunk in chunks]
    return PrefillLeap(chunks, costs, list(accumulate((c.total for c in costs), initial=now))[1:])
