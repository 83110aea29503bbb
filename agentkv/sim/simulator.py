"""Serve a trace on a modelled deployment: the engine's scheduler and KV cache policy core, on a clock.

Sessions are closed loops: a session's first request arrives when the arrival model places it, and each next
request a think time after the previous reply completes (the trace's think time, or its gap less the recorded
service time), so a slow deployment slows its agents down as it would in life. Each replica runs the same
`Scheduler` over its own `KVCache` as the engine does; a step lasts what the step-cost model says, plus tier
transfers where they do not overlap. Decode-only stretches with nothing else due are advanced in one leap: through
the first step at which a sequence finishes (that step's accounting, the finish included, runs at the leap's end)
or to the first that needs a block the GPU tier cannot reserve. Arrivals elsewhere do not end it; one routed to
the leaping replica cuts it at the step in progress, where a step-by-step run would admit it, and the router sees
the steps done so far.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.policies import make_policy
from agentkv.kvcache.sizing import kv_bytes_per_block, state_bytes
from agentkv.kvcache.tiers import TIER_LINKS, TierSpec
from agentkv.scheduler import PrefillChunk, Scheduler, SchedulerConfig, Sequence, StepPlan
from agentkv.scheduler.scheduler import blocks_for
from agentkv.sim.local_ids import LocalIds, PagedIds
from agentkv.sim.prefill_leap import PrefillLeap, prefill_leap
from agentkv.sim.pricing import attribute, prefill_cost, price_chunk, price_step
from agentkv.sim.result import Records, SimResult
from agentkv.sim.router import Router
from agentkv.sim.stepcost import Deployment, StepCost, StepShape, step_cost
from agentkv.workload.arrivals import ArrivalModel, offered_seconds, place
from agentkv.workload.trace import Trace


@dataclass(slots=True, frozen=True)
class SimConfig:
    deployment: Deployment
    replicas: int = 1
    policy: str = "lru"
    prefix_cache: bool = True
    dram_bytes: float = 0.0  # per replica
    disk_bytes: float = 0.0  # per replica
    write_through: bool = False
    router: str = "prefix-aware"
    max_batched_tokens: int = 8192
    max_num_seqs: int = 256
    arrival: ArrivalModel = field(default_factory=ArrivalModel)
    prompt_landed: bool = False  # a decode pool (sim/pd_simulation.py): prompts arrive computed; held, not priced


class _Replica:
    def __init__(self, cfg: SimConfig, block_size: int, name: int, prompt: list[PagedIds], ids: int) -> None:
        self.name = name
        self.prompt = prompt  # the last prompt the router asked about, split by page: one list for the fleet
        d = cfg.deployment
        block = kv_bytes_per_block(d.model, d.kv_codec, block_size, d.kv_ranks)
        tiers = [TierSpec("gpu", max(d.kv_capacity_bytes, 0.0), block)]
        for name, size in (("dram", cfg.dram_bytes), ("disk", cfg.disk_bytes)):
            if size > 0:
                tiers.append(TierSpec(name, size, block))
        policy = make_policy(cfg.policy, model=d.model, block_size=block_size)
        self.cache = KVCache(tiers, policy, cfg.write_through, max_ids=ids)  # its local ids: at most the trace's
        self.tier_links = [TIER_LINKS[t.name] for t in tiers]
        self.block_bytes = block
        state = math.ceil(state_bytes(d.model, d.kv_codec, block_size, d.kv_ranks) / block)
        self.sched = Scheduler(SchedulerConfig(block_size, cfg.max_batched_tokens, cfg.max_num_seqs,
                                               cfg.prefix_cache, state), self.cache)
        self.busy = False
        self.busy_s = 0.0
        self.leap: _Leap | PrefillLeap | None = None
        self.ids = LocalIds()  # the policy core's arrays follow the blocks routed here, not the whole trace's

    def outstanding_tokens(self) -> int:
        s = self.sched
        return sum(q.prompt_len - q.computed + q.max_tokens - q.generated for q in (*s.waiting, *s.running))

    def cached_prefix(self, ids: np.ndarray) -> int:
        if self.prompt[0].ids is not ids:  # the router asks every replica about one prompt: split it once
            self.prompt[0] = PagedIds.of(ids)
        seen = self.ids.seen_prefix(self.prompt[0])
        return self.cache.held_prefix(seen) if len(seen) else 0  # most replicas never saw the prompt's head

    def catch_up(self, now: float) -> None:
        """Apply the decode steps of a leap that have ended by `now` to the running sequences."""
        leap = self.leap
        if leap is None:
            return
        done = min(leap.steps - leap.finishes, int((now - leap.start) / leap.per_step))
        if done > leap.applied:
            for q in self.sched.running:
                q.computed += done - leap.applied
                q.generated += done - leap.applied
            leap.applied = done


@dataclass(slots=True)
class _Leap:
    """Decode steps a replica runs in one event: `steps` of `per_step` seconds from `start`, priced at mid-leap
    context (`cost`, `ahead` steps past the start); `applied` of them already applied; `event` names the step
    completion that ends it (a cut leaves the earlier one stale); `finishes`: its last step finishes a sequence
    (that step is applied by the scheduler's own accounting when the leap lands)."""

    start: float
    per_step: float
    steps: int
    cost: StepCost
    ahead: int
    event: int
    finishes: bool
    applied: int = 0


def simulate(trace: Trace, cfg: SimConfig) -> SimResult:
    sim = Simulator(trace, cfg)
    try:
        return sim.run()
    finally:
        sim.trace.block_log.drop_built()  # the placed trace outlives the run (`place` keeps it): not its lists
        cfg.deployment.by_chunk.clear()  # its result keeps the deployment: not the prompt chunks it priced


class Simulator:
    """Two event queues (arrivals, which a decode leap must not run past, and replicas' step completions) and
    the counters the cost model reads."""

    def __init__(self, trace: Trace, cfg: SimConfig) -> None:
        if not trace.has_block_ids and cfg.prefix_cache:
            raise ValueError("trace has no block ids: simulate it with the prefix cache off")
        self.trace, self.first_arrival = place(trace, cfg.arrival)  # sessions already open at 0: see arrivals
        self.offered = offered_seconds(trace, cfg.arrival, self.first_arrival)
        self.cfg, self.d = cfg, cfg.deployment
        prompt = [PagedIds.of(np.zeros(0, dtype=np.int64))]
        self.replicas = [_Replica(cfg, trace.block_size, r, prompt, self.trace.n_block_ids)
                         for r in range(cfg.replicas)]
        self.router = Router(cfg.router)
        self.prompt = prompt
        self.pause = agent_pauses(self.trace)
        self.records = Records(trace.n_requests, len(self.replicas[0].cache.tiers))
        self.totals = dict(prefill=0.0, decode=0.0, cached=0.0, transfer=0.0, steps=0, prefill_tokens=0,
                           decode_tokens=0)
        self.arrivals: list[tuple[float, int]] = []
        self.prefill_costs: dict[tuple, StepCost] = {}  # see pricing.price_step
        self.steps: list[tuple[float, int, int, StepPlan | None]] = []
        self._order = 0  # ties between step completions break by push order
        self.in_system = 0.0
        self.open = 0  # requests queued or running over all replicas (added, not yet finished)
        self.numbered: dict[int, tuple[int, int, np.ndarray]] = {}  # session -> its last request, replica, local ids

    def run(self) -> SimResult:
        wall = time.perf_counter()
        trace = self.trace
        first_arrival = self.first_arrival
        bounds = trace.session_bounds()
        for s in range(trace.n_sessions):
            if bounds[s + 1] > bounds[s]:
                heapq.heappush(self.arrivals, (float(first_arrival[bounds[s]]), int(bounds[s])))
        last_t = 0.0
        while self.arrivals or self.steps:
            t_next = min(self.arrivals[0][0] if self.arrivals else np.inf, self.steps[0][0] if self.steps else np.inf)
            if last_t:
                self.in_system += (t_next - last_t) * self.open
            last_t = t_next
            if self.arrivals and (not self.steps or self.arrivals[0][0] <= self.steps[0][0]):
                self._arrive(*heapq.heappop(self.arrivals))
            else:
                now, order, r, plan = heapq.heappop(self.steps)
                self._step_done(r, now, plan, order)
        return self._result(time.perf_counter() - wall, self.offered)

    def _arrive(self, now: float, i: int) -> None:
        trace, res = self.trace, self.records
        seq = Sequence(i, int(trace.input_tokens[i]), _NO_IDS, max(int(trace.output_tokens[i]), 1),
                       arrival=now, session=int(trace.session[i]),
                       tenant=int(trace.session_tenant[trace.session[i]]), finish=int(trace.finish[i]))
        if seq.prompt_len + seq.max_tokens > self.d.model.context:  # the model cannot take it: no replica sees it
            res.arrival[i] = now
            res.rejected[i] = res.over_window[i] = True
            self._next_in_session(i, now)
            return
        for rep in self.replicas:
            if isinstance(rep.leap, PrefillLeap):
                rep.leap.apply(rep.sched, now, partial(self._price_chunk, rep))
            else:
                rep.catch_up(now)
        named = self.cfg.prefix_cache  # off: no id is looked up or named, so none is read
        r = 0 if len(self.replicas) == 1 else self.router.pick(self.replicas, trace.blocks(i) if named else _NO_IDS,
                                                                seq.prompt_len, trace.block_size, seq.session)
        res.arrival[i], res.replica[i] = now, r
        seq.block_ids = self._local_ids(i, r) if named else _NO_IDS
        try:
            self.replicas[r].sched.add(seq)
        except ValueError:  # longer than the replica's whole KV: it can never run here
            res.rejected[i] = True
            self._next_in_session(i, now)
            return
        self.open += 1
        if self.replicas[r].leap is not None:
            self._cut(r, now)
        elif not self.replicas[r].busy:
            self._start_step(r, now)

    def _local_ids(self, i: int, r: int) -> np.ndarray:
        """Request i's block ids as replica r numbers them. Where the request it extends was numbered there too,
        from that one's local ids and its own new ids (`LocalIds.extend`): its full list is never built."""
        log, ids, session = self.trace.block_log, self.replicas[r].ids, int(self.trace.session[i])
        last = self.numbered.get(session)
        if last is not None and last[0] == log.parent[i] and last[1] == r:
            local = ids.extend(last[2], int(log.shared[i]), log.new(i))
        else:
            full = self.trace.blocks(i)
            local = ids.assign(self.prompt[0] if self.prompt[0].ids is full else PagedIds.of(full))
        self.numbered[session] = (i, r, local)
        return local

    def _next_in_session(self, i: int, now: float) -> None:
        j = i + 1
        if j < self.trace.n_requests and self.trace.session[j] == self.trace.session[i]:
            heapq.heappush(self.arrivals, (now + float(self.pause[j]), j))
        else:
            self.numbered.pop(int(self.trace.session[i]), None)  # the session is over

    def _push_step(self, t: float, r: int, plan: StepPlan | None) -> None:
        self._order += 1
        heapq.heappush(self.steps, (t, self._order, r, plan))

    def _start_step(self, r: int, now: float) -> None:
        rep = self.replicas[r]
        plan = rep.sched.schedule(now)
        if plan.empty:
            rep.busy = False
            return
        rep.busy = True
        self._push_step(now + self._price(rep, plan), r, plan)

    def _price(self, rep: _Replica, plan: StepPlan) -> float:
        secs = price_step(plan, self.d, rep.tier_links, rep.block_bytes, self.totals, self.prefill_costs,
                          landed=self.cfg.prompt_landed)
        rep.busy_s += secs
        return secs

    def _step_done(self, r: int, now: float, plan: StepPlan | None, order: int) -> None:
        rep = self.replicas[r]
        if plan is None:
            if rep.leap is None or rep.leap.event != order:
                return  # a leap's end that a cut moved earlier
            self._land(rep, now)
        else:
            self._finished(rep.sched.postprocess(plan, now), now)
            if self._leap(r, now):
                return
        self._start_step(r, now)

    def _finished(self, seqs: list[Sequence], now: float) -> None:
        for seq in seqs:
            self.open -= 1
            self.records.record(seq)
            self._next_in_session(seq.seq_id, now)

    def _leap(self, r: int, now: float) -> bool:
        """Start the head sequence's full prompt chunks as one event (`prefill_leap`), or a decode-only stretch,
        through the step at which a sequence finishes, or to the one that needs a block."""
        rep = self.replicas[r]
        if (chunks := prefill_leap(rep.sched, now, self._chunk_cost)) is not None:
            self._push_step(chunks.end, r, None)
            chunks.event, rep.leap = self._order, chunks
            return True
        to_finish, fits = _decode_leap(rep.sched)
        k = _reserve_ahead(rep, to_finish, fits, now)
        if k < 2:
            return False
        mid = k // 2
        cost = step_cost(StepShape(decodes=tuple(q.computed + 1 + mid for q in rep.sched.running)), self.d)
        self._push_step(now + k * cost.total, r, None)
        rep.leap = _Leap(now, cost.total, k, cost, mid, self._order, finishes=k == to_finish)
        return True

    def _chunk_cost(self, chunk: PrefillChunk) -> StepCost:
        """A step of this chunk alone, as `price_step` prices it."""
        return prefill_cost(() if self.cfg.prompt_landed else ((chunk.n, chunk.start),), self.d, self.prefill_costs)

    def _price_chunk(self, rep: _Replica, chunk: PrefillChunk, cost: StepCost) -> None:
        rep.busy_s += price_chunk(chunk, cost, self.totals, self.cfg.prompt_landed)

    def _cut(self, r: int, now: float) -> None:
        """A request joined a leaping replica: a decode leap ends with the step in progress (a prompt's full chunks
        leave it no room: it queues)."""
        leap = self.replicas[r].leap
        if isinstance(leap, PrefillLeap):
            return
        done = min(leap.steps, max(leap.applied, math.ceil((now - leap.start) / leap.per_step)))
        if done < leap.steps:
            leap.steps, leap.finishes = done, False
            self._push_step(leap.start + done * leap.per_step, r, None)
            leap.event = self._order

    def _land(self, rep: _Replica, now: float) -> None:
        """A leap ended: its steps applied, priced and attributed; a last step that finishes a sequence applied by
        the scheduler's accounting of a decode step (commits, the finish, its release). A prompt's chunks: the rest
        applied."""
        leap, running = rep.leap, rep.sched.running
        if isinstance(leap, PrefillLeap):
            leap.apply(rep.sched, math.inf, partial(self._price_chunk, rep))
            rep.leap = None
            return
        attribute(leap.cost, [], running, self.totals, steps=leap.steps, ahead=leap.ahead - leap.applied)
        plain = leap.steps - leap.finishes - leap.applied
        for q in running:
            q.computed += plain
            q.generated += plain
        self.totals["steps"] += leap.steps
        self.totals["decode_tokens"] += leap.steps * len(running)
        rep.busy_s += leap.steps * leap.per_step
        rep.leap = None
        if leap.finishes:
            self._finished(rep.sched.postprocess(StepPlan(decodes=list(running)), now), now)

    def _result(self, wall: float, offered: float) -> SimResult:
        res, trace, totals = self.records, self.trace, self.totals
        served = np.any(~np.isnan(res.finish))
        makespan = float(np.nanmax(res.finish)) - float(np.nanmin(res.arrival)) if served else 0.0
        return SimResult(
            arrival=res.arrival, first_token=res.first_token, finish=res.finish,
            prompt=trace.input_tokens.copy(), output=np.maximum(trace.output_tokens, 1), cached=res.cached,
            replica=res.replica, preemptions=res.preemptions, rejected=res.rejected, over_window=res.over_window,
            busy_s=np.array([rep.busy_s for rep in self.replicas]), makespan_s=makespan, offered_s=offered,
            prefill_s=totals["prefill"], decode_s=totals["decode"], cached_s=totals["cached"],
            transfer_s=totals["transfer"],
            steps=int(totals["steps"]), prefill_tokens=int(totals["prefill_tokens"]),
            decode_tokens=int(totals["decode_tokens"]), in_system_s=self.in_system, wall_s=wall, config=self.cfg,
            pause=self.pause, recorded_s=trace.api_time.astype(np.float64),
        )


_NO_IDS = np.zeros(0, dtype=np.int64)  # a request's ids before routing (its replica numbers them)


def _decode_leap(sched: Scheduler) -> tuple[int, int]:
    """(decode-only steps through the first that finishes a sequence, of those how many fit the blocks held)
    with this exact composition (nobody could be admitted meanwhile); (0, 0) where a step must be scheduled."""
    if not sched.running or any(s.in_prefill for s in sched.running):
        return 0, 0
    if sched.waiting and not sched.head_blocked:
        return 0, 0  # the head of the queue might be admitted at the next step
    bs = sched.cfg.block_size
    to_finish = max(0, min(s.max_tokens - s.generated for s in sched.running))
    return to_finish, min(to_finish, min(s.blocks_held * bs - s.computed for s in sched.running))


def _reserve_ahead(rep: _Replica, to_finish: int, fits: int, now: float) -> int:
    """Steps a leap can run: to the first finish, with the blocks its decodes will write reserved now where the
    GPU tier has them free (no eviction: the cache is as a step-by-step run leaves it); else to the first block
    boundary."""
    if to_finish <= fits:
        return fits
    bs, running = rep.sched.cfg.block_size, rep.sched.running
    need = [max(blocks_for(q.computed + to_finish, bs) - q.blocks_held, 0) for q in running]
    if sum(need) > rep.cache.free_blocks(0):
        return fits
    for q, n in zip(running, need, strict=True):
        if n:
            rep.cache.reserve(q.seq_id, n, now)
            q.blocks_held += n
    return to_finish


def agent_pauses(trace: Trace) -> np.ndarray:
    """Seconds between a request's predecessor (same session) completing and the request being sent."""
    gap = np.diff(trace.time, prepend=trace.time[:1])
    api_prev = np.concatenate([[0.0], np.nan_to_num(trace.api_time[:-1].astype(np.float64), nan=0.0)])
    pause = np.where(np.isnan(trace.think_time), np.maximum(gap - api_prev, 0.0), trace.think_time)
    first = np.concatenate([[True], trace.session[1:] != trace.session[:-1]])
    return np.where(first, 0.0, pause)
