"""Capacity per GPU: the most concurrent agent sessions one replica serves within the SLO, per lever.

Whole replicas are coarse (at 20 sessions several levers all need one GPU), so each lever is also measured on
one replica under rising load: Poisson session starts at a target concurrency (as `--concurrency` sets it:
start rate × mean recorded session length), bracketed by doubling and then narrowed geometrically to within
RESOLUTION. Two analytic bounds come first: the prefill floor (`floor_miss`: no load meets the SLO) and the
throughput bound on the agents' pace (`slo_bound`: above it one replica's least work slows the sessions past the
SLO's tolerance, a miss without a simulation), which caps the doubling and, where it leaves no room to double the start, moves the first
probe to the geometric middle of [1, bound] (`bounded_search`; `Capacity.bound` says where it closed the
bracket). KV room is no bound on the SLO: a replica short of it evicts and recomputes, slower but not failing,
so where that crosses the SLO only a simulation says. Large traces are measured on an evenly spaced sample of sessions; a load above the sample's session
count replays copies of its sessions (fresh ids for their private blocks), so the search is not capped by it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

import numpy as np

from agentkv.report.ladder import DeploymentSpec, Rung, prefill_floor, rung_config, slo_ttft
from agentkv.report.pool import result_of
from agentkv.report.slo import meets_slo, slo_misses
from agentkv.sim.attention import prefill_work
from agentkv.sim.simulator import SimResult, simulate
from agentkv.sim.stepcost import Deployment, token_seconds
from agentkv.workload.arrivals import ArrivalModel, root_sessions, session_spans
from agentkv.workload.trace import Trace

SAMPLE_SESSIONS = 120  # top-level sessions the search simulates at most
MAX_SESSIONS = 4096.0  # the most concurrent sessions one replica is probed at: beyond it, a lower bound
RESOLUTION = 1.5  # stop when the highest load met and the lowest missed are this close: one geometric midpoint
# inside a doubling bracket (√2 apart), which keeps the default report within a minute on 2 cores
Results = dict[float, SimResult]  # by target concurrency


@dataclass(slots=True)
class Capacity:
    sessions_per_replica: float  # the highest concurrency that met the SLO; 0: none did
    ttft_slo_s: float  # TTFT at the SLO's percentile there (at the lightest load tried, or the floor, where none did)
    at_limit: bool = False  # met at MAX_SESSIONS, the most load probed: a lower bound
    reason: str = ""  # why none met it
    probes: list[tuple[float, float]] = field(default_factory=list)  # (target concurrency, TTFT at the SLO's q)
    tokens_per_session_s: float = 0.0  # prompt and output tokens an open session sends per second, at capacity
    undefined: bool = False  # the trace's sessions have no length, so a concurrency cannot place them: not probed
    bound: str = ""  # where an analytic bound closed the bracket from above instead of a probe ("": none did)


def session_capacity(trace: Trace, spec: DeploymentSpec, rung: Rung, seed: int, start: float = 20.0,
                     max_runs: int = 5, runs: dict[float, SimResult] | None = None,
                     max_sessions: float = MAX_SESSIONS, pool: Executor | None = None, width: int = 2) -> Capacity:
    """Probes halve once below `start`, then drop to one session; `runs` (concurrency → result) is filled. The
    load is not capped by the trace's session count: past it, placement wraps each session round the shorter
    window, and every later lap is another user's copy of it with fresh ids for its private blocks (see
    `workload.arrivals.place`). With a `pool`, up to `width` probes run side by side: the next one and those
    that follow it either way it goes; the answer, `runs` and `probes` are the sequential search's."""
    if (miss := floor_miss(trace, spec, rung)) is not None:
        return miss
    top = root_sessions(trace) == np.arange(trace.n_sessions)
    if not top.any() or float(session_spans(trace)[top].mean()) <= 0:
        return Capacity(0.0, float("nan"), undefined=True,
                        reason="its sessions are single requests with no recorded service time, so no concurrency "
                               "can place them (Little's law would pack the whole trace into an instant); sized on "
                               "the arrivals as offered instead")
    search = bounded_search(float(min(max(start, 1.0), max_sessions)), max_sessions, max_runs,
                            slo_bound(trace, spec, rung))
    done, met = search.run(_Probe(trace, spec, rung, seed), spec, pool, width)
    runs = {} if runs is None else runs
    path, _, (lo, hi) = search.replay(met)
    runs.update({c: done[c] for c in path})
    probes = [(c, slo_ttft(done[c], spec)) for c in path]
    if lo is None:
        least = runs[min(runs)]
        return Capacity(0.0, slo_ttft(least, spec), reason="misses it with one session at a time ("
                                                         + "; ".join(slo_misses(least, spec)) + ")", probes=probes)
    bound = f"{hi:.3g} sessions: the throughput bound on the agents' pace, not simulated" \
        if hi == search.known_miss else ""
    return Capacity(lo, slo_ttft(runs[lo], spec), at_limit=hi is None, probes=probes,
                    tokens_per_session_s=billed_tokens(runs[lo]) / max(runs[lo].billed_s * lo, 1e-9), bound=bound)


def bounded_search(start: float, max_sessions: float, max_runs: int, known_miss: float) -> Search:
    """The search between the bounds: from `start`, or where the throughput bound leaves it no room to double,
    from the geometric middle of one session and the bound (the bracket's widest unknown span, halved in log)."""
    first = start if 2 * start < known_miss else max(math.sqrt(known_miss), 1.0)
    return Search(min(first, max_sessions), max_sessions, max_runs, known_miss)


def floor_miss(trace: Trace, spec: DeploymentSpec, rung: Rung) -> Capacity | None:
    """No load, on any fleet, meets the SLO where its percentile's prompt alone takes longer to prefill on an idle
    GPU than the TTFT bound (a rung without a prefix cache): known without a simulation. None otherwise."""
    floor = prefill_floor(trace, spec, rung)
    if floor <= spec.slo_ttft_s:
        return None
    return Capacity(0.0, floor, reason=f"the p{spec.slo_quantile:g} prompt alone takes {floor:.0f} s to prefill on "
                                       "an idle GPU")


@dataclass(slots=True, frozen=True)
class _Probe:
    """One replica at a target concurrency: what every probe simulates (picklable, for a pool's workers)."""

    trace: Trace
    spec: DeploymentSpec
    rung: Rung
    seed: int

    def __call__(self, c: float) -> SimResult:
        arrival = ArrivalModel("concurrency", c, self.seed)
        return simulate(self.trace, rung_config(self.spec, self.rung, arrival, 1))


@dataclass(slots=True, frozen=True)
class Search:
    """The bracket search as data: which load to probe next follows from the outcomes (met or not) so far, so
    a probe's outcome can be guessed both ways and its successors run beside it."""

    first: float
    max_sessions: float
    max_runs: int
    known_miss: float = math.inf  # a load that misses without a simulation (`slo_bound`): never probed

    def _steps(self) -> Generator[float, bool, tuple[float | None, float | None]]:
        """Yields each load to probe, is sent whether it met the SLO; returns (highest met, lowest missed)."""
        first, c = self.first, self.first
        lo, hi = (c, None) if (yield c) else (None, c)
        n = 1
        while lo is None and hi is not None and hi > 1.0:
            c = max(hi / 2, 1.0) if hi == first else 1.0  # halve once, then try one session at a time
            lo, hi = (c, hi) if (yield c) else (None, c)
            n += 1
        while hi is None and lo is not None and lo < self.max_sessions:
            c = min(2 * lo, self.max_sessions)
            if c >= self.known_miss:
                hi = self.known_miss
                break
            lo, hi = (c, None) if (yield c) else (lo, c)
            n += 1
        while lo is not None and hi is not None and hi / lo > RESOLUTION and n < self.max_runs:
            c = math.sqrt(lo * hi)
            lo, hi = (c, hi) if (yield c) else (lo, c)
            n += 1
        return lo, hi

    def replay(self, met: dict[float, bool]) -> tuple[list[float], float | None, tuple[float | None, float | None]]:
        """(the loads probed in order, the next load whose outcome `met` lacks or None, the bracket at the end)."""
        steps, path = self._steps(), []
        try:
            c = next(steps)
            while c in met:
                path.append(c)
                c = steps.send(met[c])
            return path, c, (None, None)
        except StopIteration as end:
            return path, None, end.value

    def frontier(self, met: dict[float, bool], width: int) -> list[float]:
        """Up to `width` loads worth probing now: the next one, then what follows each guess of its outcome."""
        out: list[float] = []
        guesses = [met]
        while guesses and len(out) < width:
            known = guesses.pop(0)
            c = self.replay(known)[1]
            if c is not None:
                out += [c] if c not in out else []
                guesses += [{**known, c: True}, {**known, c: False}]
        return out

    def run(self, probe: Callable[[float], SimResult], spec: DeploymentSpec, pool: Executor | None = None,
            width: int = 1) -> tuple[Results, dict[float, bool]]:
        """Probes until the bracket is found: one after another, or with a `pool` up to `width` in flight (the
        next one and what follows either guess of its outcome; guesses that turn out wrong are dropped).
        Returns (the results, whether each met the SLO)."""
        done: Results = {}
        met: dict[float, bool] = {}
        flying: dict[float, Future[SimResult]] = {}
        while (c := self.replay(met)[1]) is not None:
            for nxt in self.frontier(met, width) if pool is not None else ():
                if nxt not in flying and nxt not in done:
                    flying[nxt] = pool.submit(probe, nxt)
            done[c] = result_of(pool, flying.pop(c)) if c in flying else probe(c)
            met[c] = meets_slo(done[c], spec)
        for f in flying.values():
            f.cancel()
        return done, met


def billed_tokens(res: SimResult) -> float:
    """Prompt and output tokens of the requests a run bills (those that arrived in its offered window)."""
    return float(res.prompt[res.billed].sum() + res.output[res.billed].sum())


def sample_sessions(trace: Trace, k: int = SAMPLE_SESSIONS) -> Trace:
    """`k` evenly spaced top-level sessions with their sub-agents (the whole trace when it has no more). Block
    ids are renumbered densely: the policy core sizes its per-block arrays (per replica) by the largest id."""
    roots = root_sessions(trace)
    top = np.flatnonzero(roots == np.arange(trace.n_sessions))
    if len(top) <= k:
        return trace
    keep = np.isin(roots, top[np.linspace(0, len(top) - 1, k).round().astype(np.int64)])
    new_id = np.cumsum(keep) - 1
    req = keep[trace.session]
    log = trace.block_log.take(np.flatnonzero(req))  # whole sessions: every parent comes along
    parent = trace.session_parent[keep]
    return Trace(
        block_size=trace.block_size, has_block_ids=trace.has_block_ids,
        session_names=[n for n, kept in zip(trace.session_names, keep, strict=True) if kept],
        session_start=trace.session_start[keep],
        session_parent=np.where(parent >= 0, new_id[np.maximum(parent, 0)], parent).astype(np.int32),
        session_tenant=trace.session_tenant[keep], tenants=list(trace.tenants),
        session=new_id[trace.session[req]].astype(np.int32), time=trace.time[req],
        input_tokens=trace.input_tokens[req], output_tokens=trace.output_tokens[req],
        think_time=trace.think_time[req], api_time=trace.api_time[req], finish=trace.finish[req],
        block_log=log.with_ids(np.unique(log.ids, return_inverse=True)[1]),
        source=f"{trace.source} (sample of {k} sessions)",
        models=list(trace.models), model=trace.model[req],
    )


def slo_bound(trace: Trace, spec: DeploymentSpec, rung: Rung) -> float:
    """Concurrent sessions per replica at and above which the SLO's pace bound is missed (inf: none known, as
    where the SLO does not bound the agents' pace). Sessions are closed loops, so over a cycle (think + turn)
    a replica's N sessions need N × their least GPU seconds: the response-time law (Denning & Buzen) makes the
    mean cycle at least N / `throughput_bound` of the recorded one, i.e. the agents run at least that many times
    slower than recorded; past the SLO's slowdown tolerance it is missed (tests/report/test_capacity_bounds.py)."""
    if not spec.slo_slowdown:
        return math.inf
    return spec.slo_slowdown * throughput_bound(trace, spec, rung)


def throughput_bound(trace: Trace, spec: DeploymentSpec, rung: Rung) -> float:
    """Concurrent sessions at which one replica's least GPU seconds fill the window the trace is offered in
    (inf: none known). A placed trace's requests are fixed (extra laps are copies of the same requests), and its
    window is Σ session spans / concurrency, so at c sessions the work fills c × least_busy_seconds / Σ spans of
    the window."""
    top = root_sessions(trace) == np.arange(trace.n_sessions)
    least = least_busy_seconds(trace, rung_config(spec, rung, ArrivalModel(), 1).deployment,
                               spec.max_batched_tokens, rung.prefix_cache)
    return float(session_spans(trace)[top].sum()) / least if least > 0 else math.inf


def least_busy_seconds(trace: Trace, d: Deployment, budget: int, prefix_cache: bool) -> float:
    """A lower bound on the GPU seconds one replica spends on the trace, from the step-cost model: every token
    computed (the whole prompt without a prefix cache; with one, each distinct full block once) and every decode
    at the least seconds per token any step of at most `budget` tokens costs (weights, collectives, KV write,
    per-step overhead), plus attention: Σ over steps of max(compute, HBM reads) ≥ max of the sums. Requests over
    the model's window are never served, so not counted; 0 where decodes are speculative (priced per token
    emitted, whose count a trace does not fix)."""
    if d.speculation is not None:
        return 0.0
    served = trace.input_tokens + np.maximum(trace.output_tokens, 1) <= d.model.context
    c, hbm = d.coefficients, d.tp * d.hardware.hbm_bw * d.coefficients.hbm_efficiency
    per_token = (min(sum(token_seconds(n, d)) / n for n in range(1, budget + 1)) + d.write_bytes_per_token / hbm
                 + (c.step_overhead_s + d.layer_floors_s) / budget)
    prompts = trace.input_tokens[served].astype(np.int64)
    outputs = np.maximum(trace.output_tokens[served].astype(np.int64), 1) - 1  # the first token ends the prefill
    computed, flops = _prefill_least(trace, d, served) if prefix_cache else (int(prompts.sum()),
                                                                             _prefill_flops(d, prompts, 0))
    dec_flops, dec_io = _decode_work(d, prompts, outputs)
    attention = max((flops + dec_flops) / (d.tp * d.hardware.bf16_flops * d.kernel[0]), dec_io / hbm)
    return (computed + int(outputs.sum())) * per_token + attention


def _decode_work(d: Deployment, prompts: np.ndarray, outputs: np.ndarray) -> tuple[float, float]:
    """(FLOPs, HBM bytes) of every decode's attention, request i's `outputs[i]` decodes at contexts from its
    prompt up: the step-cost model's own table, over slices of ~1M decodes (a long trace has hundreds of millions)."""
    flops = io = 0.0
    ends = np.cumsum(outputs)
    for part in np.array_split(np.arange(len(outputs)), max(1, int(ends[-1]) >> 20) if len(ends) else 1):
        p, o = prompts[part], outputs[part]
        contexts = np.repeat(p, o) + np.arange(int(o.sum())) - np.repeat(np.cumsum(o) - o, o)
        work = d.decode_table.work(contexts.astype(float) if d.decode_table.needs_contexts else None, len(contexts),
                                   float(contexts.sum()))
        flops, io = flops + work.flops, io + work.io_bytes
    return flops, io


def _prefill_least(trace: Trace, d: Deployment, served: np.ndarray) -> tuple[int, float]:
    """(tokens, attention FLOPs) a prefix cache cannot spare: each distinct block the served requests add, computed
    once at its place (a block id names its whole prefix, so its position), less one block per request (a
    request's last block may be partial)."""
    log, size = trace.block_log, trace.block_size
    new = np.diff(log.offsets)
    keep = np.repeat(served, new)
    position = (np.repeat(log.shared, new) + np.arange(len(log.ids)) - np.repeat(log.offsets[:-1], new))[keep]
    ids, first = np.unique(log.ids[keep], return_index=True)
    blocks = position[first]
    full = max(len(ids) - int(served.sum()), 0)
    starts = np.sort(blocks)[:full] * size  # the earliest places: the cheapest blocks to attend from
    return full * size, _prefill_flops(d, starts + size, 0) - _prefill_flops(d, starts, 0)


def _prefill_flops(d: Deployment, ends: np.ndarray, start: int) -> float:
    """Σ attention FLOPs of prefilling tokens start..end of each of `ends` (every layer group): a prefix
    difference, so however the scheduler chunks them (one call per distinct length)."""
    lengths, count = np.unique(ends, return_counts=True)
    tile = d.coefficients.query_tile
    per = [sum(prefill_work(g, start, int(n) - start, tile).flops for g in d.groups) if n > start else 0.0
           for n in lengths]
    return float(np.dot(per, count))
