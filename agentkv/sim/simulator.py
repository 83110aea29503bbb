"""Serve a trace on a modelled deployment: the engine's scheduler and KV cache policy core, on a clock.

Sessions are closed loops: a session's first request arrives when the arrival model places it, and each next
request a think time after the previous reply completes (the trace's think time, or its gap less the recorded
service time), so a slow deployment slows its agents down as it would in life. Each replica runs the same
`Scheduler` over its own `KVCache` as the engine does; a step lasts what the step-cost model says, plus tier
transfers where they do not overlap. Decode-only stretches with nothing else due are advanced in one leap.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

import numpy as np

from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.policies import make_policy
from agentkv.kvcache.sizing import kv_bytes_per_block
from agentkv.kvcache.tiers import TierSpec
from agentkv.scheduler import Scheduler, SchedulerConfig, Sequence, StepPlan
from agentkv.sim.router import Router
from agentkv.sim.stepcost import Deployment, StepShape, step_cost, transfer_seconds
from agentkv.workload.arrivals import ArrivalModel, arrival_times
from agentkv.workload.trace import Trace

TIER_LINK = {1: "host", 2: "nvme", 3: "network"}  # the link a promotion from tier t crosses
MAX_LEAP_S = 0.5  # a request arriving during a decode leap waits at most this long for admission


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


@dataclass(slots=True)
class SimResult:
    arrival: np.ndarray
    first_token: np.ndarray  # NaN: rejected
    finish: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    cached: np.ndarray  # [R, tiers] prompt tokens served from each tier
    replica: np.ndarray
    preemptions: np.ndarray
    rejected: np.ndarray  # could never fit in a replica's KV
    busy_s: np.ndarray  # per replica
    makespan_s: float
    prefill_s: float  # busy time attributed to prefill, decode and non-overlapped transfers
    decode_s: float
    transfer_s: float
    steps: int
    prefill_tokens: int  # tokens computed by prefill (cached prefixes excluded; preemption recompute included)
    decode_tokens: int
    in_system_s: float  # ∫ (requests queued or running, over all replicas) dt, from the schedulers' own state
    wall_s: float
    config: SimConfig

    @property
    def served(self) -> np.ndarray:
        return ~self.rejected

    @property
    def ttft(self) -> np.ndarray:
        return (self.first_token - self.arrival)[self.served]

    @property
    def tpot(self) -> np.ndarray:
        ok = self.served & (self.output > 1)
        return (self.finish - self.first_token)[ok] / (self.output[ok] - 1)

    @property
    def e2e(self) -> np.ndarray:
        return (self.finish - self.arrival)[self.served]

    @property
    def hit_rate(self) -> float:
        return float(self.cached[self.served].sum()) / max(int(self.prompt[self.served].sum()), 1)

    @property
    def utilization(self) -> np.ndarray:
        return self.busy_s / max(self.makespan_s, 1e-9)


class _Replica:
    def __init__(self, cfg: SimConfig, block_size: int) -> None:
        d = cfg.deployment
        block = kv_bytes_per_block(d.model, d.kv_codec, block_size)
        tiers = [TierSpec("gpu", max(d.kv_capacity_bytes, 0.0), block)]
        for name, size in (("dram", cfg.dram_bytes), ("disk", cfg.disk_bytes)):
            if size > 0:
                tiers.append(TierSpec(name, size, block))
        policy = make_policy(cfg.policy, model=d.model, block_size=block_size)
        self.cache = KVCache(tiers, policy, cfg.write_through)
        self.tier_links = [TIER_LINK.get(i, "host") for i in range(len(tiers))]
        self.block_bytes = block
        self.sched = Scheduler(SchedulerConfig(block_size, cfg.max_batched_tokens, cfg.max_num_seqs,
                                               cfg.prefix_cache), self.cache)
        self.busy = False
        self.busy_s = 0.0

    def outstanding_tokens(self) -> int:
        s = self.sched
        return sum(q.prompt_len - q.computed + q.max_tokens - q.generated for q in (*s.waiting, *s.running))

    def cached_prefix(self, ids: np.ndarray) -> int:
        return self.cache.lookup(ids)[0]


def simulate(trace: Trace, cfg: SimConfig) -> SimResult:
    if not trace.has_block_ids and cfg.prefix_cache:
        raise ValueError("trace has no block ids: simulate it with the prefix cache off")
    wall = time.perf_counter()
    d = cfg.deployment
    n = trace.n_requests
    bs = trace.block_size
    replicas = [_Replica(cfg, bs) for _ in range(cfg.replicas)]
    router = Router(cfg.router)
    first_arrival = arrival_times(trace, cfg.arrival)
    pause = _pauses(trace)
    bounds = trace.session_bounds()
    n_tiers = len(replicas[0].cache.tiers)
    res = _Records(n, n_tiers)
    totals = dict(prefill=0.0, decode=0.0, transfer=0.0, steps=0, prefill_tokens=0, decode_tokens=0)

    # two queues: arrivals (which a leap must not run past) and replicas' step completions
    arrivals: list[tuple[float, int]] = []
    steps: list[tuple[float, int, int, StepPlan | None]] = []
    counter = [0]

    def push(t: float, kind: int, who: int, payload: StepPlan | None = None) -> None:
        counter[0] += 1
        if kind == ARRIVE:
            heapq.heappush(arrivals, (t, who))
        else:
            heapq.heappush(steps, (t, counter[0], who, payload))

    ARRIVE, DONE = 0, 1
    for s in range(trace.n_sessions):
        if bounds[s + 1] > bounds[s]:
            push(float(first_arrival[bounds[s]]), ARRIVE, int(bounds[s]))

    def next_in_session(i: int, now: float) -> None:
        j = i + 1
        if j < n and trace.session[j] == trace.session[i]:
            push(now + float(pause[j]), ARRIVE, j)

    def start_step(r: int, now: float) -> None:
        rep = replicas[r]
        batch = rep.sched.schedule(now)
        if batch.empty:
            rep.busy = False
            return
        rep.busy = True
        secs = _price(batch, d, rep.tier_links, rep.block_bytes, totals)
        rep.busy_s += secs
        push(now + secs, DONE, r, batch)

    in_system, last_t = 0.0, 0.0
    while arrivals or steps:
        t_next = min(arrivals[0][0] if arrivals else np.inf, steps[0][0] if steps else np.inf)
        if last_t:
            in_system += (t_next - last_t) * sum(len(p.sched.waiting) + len(p.sched.running) for p in replicas)
        last_t = t_next
        if arrivals and (not steps or arrivals[0][0] <= steps[0][0]):
            now, i = heapq.heappop(arrivals)
            seq = Sequence(i, int(trace.input_tokens[i]), trace.blocks(i), max(int(trace.output_tokens[i]), 1),
                           arrival=now, session=int(trace.session[i]),
                           tenant=int(trace.session_tenant[trace.session[i]]), finish=int(trace.finish[i]))
            r = router.pick(replicas, seq.block_ids, seq.prompt_len, bs)
            res.arrival[i], res.replica[i] = now, r
            try:
                replicas[r].sched.add(seq)
            except ValueError:  # longer than the replica's whole KV: it can never run here
                res.rejected[i] = True
                next_in_session(i, now)
                continue
            if not replicas[r].busy:
                start_step(r, now)
            continue
        now, _, r, batch = heapq.heappop(steps)
        rep = replicas[r]
        if batch is not None:
            for seq in rep.sched.postprocess(batch, now):
                res.record(seq)
                next_in_session(seq.seq_id, now)
            k = _decode_leap(rep.sched)
            if k >= 2:
                ctx = tuple(q.computed + 1 + k // 2 for q in rep.sched.running)
                per_step = step_cost(StepShape(decodes=ctx), d).total
                horizon = min(arrivals[0][0] if arrivals else np.inf, now + MAX_LEAP_S)
                k = min(k, int((horizon - now) / per_step))
                if k >= 2:
                    for q in rep.sched.running:
                        q.computed += k
                        q.generated += k
                    totals["decode"] += k * per_step
                    totals["steps"] += k
                    totals["decode_tokens"] += k * len(ctx)
                    rep.busy_s += k * per_step
                    push(now + k * per_step, DONE, r, None)
                    continue
        start_step(r, now)

    makespan = float(np.nanmax(res.finish)) - float(np.nanmin(res.arrival)) if np.any(~np.isnan(res.finish)) else 0.0
    return SimResult(
        arrival=res.arrival, first_token=res.first_token, finish=res.finish,
        prompt=trace.input_tokens.copy(), output=np.maximum(trace.output_tokens, 1), cached=res.cached,
        replica=res.replica, preemptions=res.preemptions, rejected=res.rejected,
        busy_s=np.array([rep.busy_s for rep in replicas]), makespan_s=makespan,
        prefill_s=totals["prefill"], decode_s=totals["decode"], transfer_s=totals["transfer"],
        steps=int(totals["steps"]), prefill_tokens=int(totals["prefill_tokens"]),
        decode_tokens=int(totals["decode_tokens"]), in_system_s=in_system, wall_s=time.perf_counter() - wall,
        config=cfg,
    )


def _decode_leap(sched: Scheduler) -> int:
    """How many decode-only steps can run with this exact composition (nobody finishes, needs a block, or
    could be admitted meanwhile): the simulator advances them in one go."""
    if not sched.running or any(s.in_prefill for s in sched.running):
        return 0
    if sched.waiting and not sched.head_blocked:
        return 0  # the head of the queue might be admitted at the next step
    bs = sched.cfg.block_size
    return max(0, min(min(s.max_tokens - s.generated - 1, s.blocks_held * bs - s.computed) for s in sched.running))


def _price(batch: StepPlan, d: Deployment, links: list[str], block_bytes: int, totals: dict) -> float:
    """Seconds the batch takes, split into prefill / decode / transfer time for the cost model."""
    prefills = tuple((c.n, c.start) for c in batch.prefills)
    decodes = tuple(q.computed + 1 for q in batch.decodes)
    cost = step_cost(StepShape(prefills, decodes), d)
    total = cost.total
    moved: dict[str, float] = {}
    for mv in batch.moves:  # every copy at its link's bandwidth: promotions, demotions, write-through copies
        if mv.kind != "drop":
            link = links[max(mv.src, mv.dst)]  # the slower end's link
            moved[link] = moved.get(link, 0.0) + len(mv.blocks) * block_bytes
    transfer = transfer_seconds(moved, d)
    secs = max(total, transfer) if d.overlap_transfers else total + transfer
    totals["prefill"] += total * cost.prefill_share
    totals["decode"] += total * (1.0 - cost.prefill_share)
    totals["transfer"] += secs - total
    totals["steps"] += 1
    totals["prefill_tokens"] += sum(c.n for c in batch.prefills)
    totals["decode_tokens"] += len(decodes)
    return secs


def _pauses(trace: Trace) -> np.ndarray:
    """Seconds between a request's predecessor (same session) completing and the request being sent."""
    gap = np.diff(trace.time, prepend=trace.time[:1])
    api_prev = np.concatenate([[0.0], np.nan_to_num(trace.api_time[:-1].astype(np.float64), nan=0.0)])
    pause = np.where(np.isnan(trace.think_time), np.maximum(gap - api_prev, 0.0), trace.think_time)
    first = np.concatenate([[True], trace.session[1:] != trace.session[:-1]])
    return np.where(first, 0.0, pause)


@dataclass(slots=True)
class _Records:
    n: int
    tiers: int
    arrival: np.ndarray = field(init=False)
    first_token: np.ndarray = field(init=False)
    finish: np.ndarray = field(init=False)
    cached: np.ndarray = field(init=False)
    replica: np.ndarray = field(init=False)
    preemptions: np.ndarray = field(init=False)
    rejected: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.arrival = np.full(self.n, np.nan)
        self.first_token = np.full(self.n, np.nan)
        self.finish = np.full(self.n, np.nan)
        self.cached = np.zeros((self.n, self.tiers), dtype=np.int64)
        self.replica = np.full(self.n, -1, dtype=np.int32)
        self.preemptions = np.zeros(self.n, dtype=np.int32)
        self.rejected = np.zeros(self.n, dtype=bool)

    def record(self, seq: Sequence) -> None:
        i = seq.seq_id
        self.first_token[i] = seq.first_token_time
        self.finish[i] = seq.finish_time
        if len(seq.cached_per_tier):
            self.cached[i, : len(seq.cached_per_tier)] = seq.cached_per_tier
        self.preemptions[i] = seq.preemptions
