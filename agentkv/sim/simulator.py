"""Serve a trace on a modelled deployment: the engine's scheduler and KV cache policy core, on a clock.

Sessions are closed loops: a session's first request arrives when the arrival model places it, and each next
request a think time after the previous reply completes (the trace's think time, or its gap less the recorded
service time), so a slow deployment slows its agents down as it would in life. Each replica runs the same
`Scheduler` over its own `KVCache` as the engine does; a step lasts what the step-cost model says, plus tier
transfers where they do not overlap. Stretches whose steps are known when the first starts run as one event: a
long prompt's full chunks (`prefill_leap.py`) and decode-only steps with nothing else due (`decode_leap.py`).
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field

import numpy as np

from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.policies import make_policy
from agentkv.kvcache.sizing import kv_bytes_per_block, state_bytes
from agentkv.kvcache.tiers import TIER_LINKS, TierSpec
from agentkv.scheduler import PrefillChunk, Scheduler, SchedulerConfig, Sequence, StepPlan
from agentkv.sim.decode_leap import DecodeLeap, decode_leap
from agentkv.sim.local_ids import LocalIds
from agentkv.sim.prefill_leap import PrefillLeap, prefill_leap
from agentkv.sim.pricing import prefill_cost, price_chunk, price_step
from agentkv.sim.result import Records, SimResult
from agentkv.sim.routed_prompt import NO_HOME, RoutedPrompt
from agentkv.sim.router import Router
from agentkv.sim.stepcost import Deployment, StepCost
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
    def __init__(self, cfg: SimConfig, block_size: int, name: int, ids: int, totals: dict) -> None:
        self.name = name
        self.totals, self.landed = totals, cfg.prompt_landed  # the fleet's counters, which its steps add to
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
        self.leap: DecodeLeap | PrefillLeap | None = None
        self.ids = LocalIds()  # the policy core's arrays follow the blocks routed here, not the whole trace's

    def price_chunk(self, chunk: PrefillChunk, cost: StepCost) -> None:
        """A leap's prompt chunk priced and accounted here (a method, not a stored closure over the simulator:
        a reference cycle would keep a finished simulation's caches until a full collection)."""
        self.busy_s += price_chunk(chunk, cost, self.totals, self.landed)

    def outstanding_tokens(self) -> int:
        s = self.sched
        return sum(q.prompt_len - q.computed + q.max_tokens - q.generated for q in (*s.waiting, *s.running))

    def cached_prefix(self, prompt: RoutedPrompt | None) -> int:
        return 0 if prompt is None else prompt.cached_on(self.name, self.ids, self.cache)  # None: no prefix cache


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
        self.totals = dict(prefill=0.0, decode=0.0, cached=0.0, transfer=0.0, steps=0, prefill_tokens=0,
                           decode_tokens=0)
        self.replicas = [_Replica(cfg, trace.block_size, r, self.trace.n_block_ids, self.totals)
                         for r in range(cfg.replicas)]
        self.router = Router(cfg.router)
        self.pause = agent_pauses(self.trace)
        self.records = Records(trace.n_requests, len(self.replicas[0].cache.tiers))
        self.arrivals: list[tuple[float, int]] = []
        self.prefill_costs: dict[tuple, StepCost] = {}  # see pricing.price_step
        self.steps: list[tuple[float, int, int, StepPlan | None]] = []
        self._order = 0  # ties between step completions break by push order
        self.in_system = 0.0
        self.open = 0  # requests queued or running over all replicas (added, not yet finished)
        self.numbered: dict[int, tuple[int, int, np.ndarray]] = {}  # session -> its last request, replica, local ids
        self.ran_on: dict[int, int] = {}  # session -> bit r set where replica r served one of its requests
        fleet = cfg.replicas > 1 and cfg.prefix_cache and cfg.router in ("prefix-aware", "session")
        self.lead = self.trace.lead_in_other_sessions() if fleet else None  # (lead, origin) per request
        self.heads: dict[int, tuple] = {}  # session -> its prompts' lead, as `RoutedPrompt.head` keeps it

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
        for rep in self.replicas:  # the router sees every leap's steps done by now
            if rep.leap is not None:
                rep.leap.apply(rep.sched, now, rep.price_chunk)
        prompt = self._prompt(i) if self.cfg.prefix_cache else None  # off: no id is looked up or named
        r = 0 if len(self.replicas) == 1 else self._route(seq, prompt)
        res.arrival[i], res.replica[i] = now, r
        if prompt is not None:
            seq.block_ids = prompt.numbered_on(r, self.replicas[r].ids)
            self.numbered[seq.session] = (i, r, seq.block_ids)
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

    def _prompt(self, i: int) -> RoutedPrompt:
        """Request i's ids as the fleet looks them up: where the request it extends was numbered on a replica, from
        that one's local ids and its own new ids; where the router reads caches, with what bounds each replica's
        answer (which replicas ran the session, the lead other sessions share: see `RoutedPrompt`)."""
        session, log = int(self.trace.session[i]), self.trace.block_log
        last = self.numbered.get(session)
        home, earlier = (last[1], last[2]) if last is not None and last[0] == log.parent[i] else (NO_HOME, None)
        if self.lead is None:
            return RoutedPrompt(log, i, session, home, earlier)
        return RoutedPrompt(log, i, session, home, earlier, ran=self.ran_on.get(session, 0),
                            lead=int(self.lead[0][i]), origin=int(self.lead[1][i]), heads=self.heads)

    def _route(self, seq: Sequence, prompt: RoutedPrompt | None) -> int:
        """The router's pick, told that a replica the session never ran on holds at most the prompt's lead that
        other sessions share (`Trace.lead_in_other_sessions`): most replicas' caches are then never asked."""
        if prompt is None:
            return self.router.pick(self.replicas, None, seq.prompt_len, self.trace.block_size, seq.session,
                                    [0] * len(self.replicas))
        if self.lead is None:  # a router that reads no cache (or a test's unbounded one): no bound kept
            return self.router.pick(self.replicas, prompt, seq.prompt_len, self.trace.block_size, seq.session)
        most = [len(prompt) if prompt.ran >> r & 1 else prompt.lead for r in range(len(self.replicas))]
        r = self.router.pick(self.replicas, prompt, seq.prompt_len, self.trace.block_size, seq.session, most)
        self.ran_on[seq.session] = prompt.ran | 1 << r
        return r

    def _next_in_session(self, i: int, now: float) -> None:
        j = i + 1
        if j < self.trace.n_requests and self.trace.session[j] == self.trace.session[i]:
            heapq.heappush(self.arrivals, (now + float(self.pause[j]), j))
        else:
            self.numbered.pop(int(self.trace.session[i]), None)  # the session is over
            self.ran_on.pop(int(self.trace.session[i]), None)
            self.heads.pop(int(self.trace.session[i]), None)

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
        """Start the head sequence's full prompt chunks as one event, or a decode-only stretch (the two leaps)."""
        rep = self.replicas[r]
        leap = prefill_leap(rep.sched, now, self._chunk_cost) or decode_leap(rep.sched, now, self.d)
        if leap is None:
            return False
        self._push_step(leap.end, r, None)
        leap.event, rep.leap = self._order, leap
        return True

    def _chunk_cost(self, chunk: PrefillChunk) -> StepCost:
        """A step of this chunk alone, as `price_step` prices it."""
        return prefill_cost(() if self.cfg.prompt_landed else ((chunk.n, chunk.start),), self.d, self.prefill_costs)

    def _cut(self, r: int, now: float) -> None:
        """A request joined a leaping replica: the leap ends with the step in progress where it can."""
        leap = self.replicas[r].leap
        if (end := leap.cut(now)) is not None:
            self._push_step(end, r, None)
            leap.event = self._order

    def _land(self, rep: _Replica, now: float) -> None:
        """A leap ended: its steps applied, priced and attributed; a last step that finishes a sequence accounted
        by the scheduler (commits, the finish, its release)."""
        leap, rep.leap = rep.leap, None
        busy, last = leap.land(rep.sched, rep.price_chunk, self.totals)
        rep.busy_s += busy
        if last is not None:
            self._finished(rep.sched.postprocess(last, now), now)

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


def agent_pauses(trace: Trace) -> np.ndarray:
    """Seconds between a request's predecessor (same session) completing and the request being sent."""
    gap = np.diff(trace.time, prepend=trace.time[:1])
    api_prev = np.concatenate([[0.0], np.nan_to_num(trace.api_time[:-1].astype(np.float64), nan=0.0)])
    pause = np.where(np.isnan(trace.think_time), np.maximum(gap - api_prev, 0.0), trace.think_time)
    first = np.concatenate([[True], trace.session[1:] != trace.session[:-1]])
    return np.where(first, 0.0, pause)
