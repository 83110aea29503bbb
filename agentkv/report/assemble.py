"""The report's content, computed: every lever's capacity per replica and size at the SLO, every lever on one
fleet, the same traffic at API prices, and the facts the headline is written from. Renderers only format it."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from agentkv.catalog import hardware
from agentkv.cost.plans import BreakEven, break_even
from agentkv.cost.providers import ProviderCost, all_providers
from agentkv.kvcache.sizing import codec
from agentkv.report.capacity import SAMPLE_SESSIONS, Capacity, sample_sessions, session_capacity
from agentkv.report.ladder import LADDER, DeploymentSpec, Rung, rung_config
from agentkv.report.levers import CodecFit, TierLoad, codec_fits, tier_loads
from agentkv.report.sizing import Sized, size_to_slo
from agentkv.sim.simulator import SimResult, simulate
from agentkv.workload.arrivals import (
    ArrivalModel,
    arrival_times,
    open_sessions,
    root_sessions,
    session_intervals,
    session_spans,
)
from agentkv.workload.trace import Trace


@dataclass(slots=True)
class RungOutcome:
    rung: Rung
    capacity: Capacity
    sized: Sized
    fleet_run: SimResult | None  # at the same-fleet size, where known


@dataclass(slots=True)
class Report:
    spec: DeploymentSpec
    hardware: str
    usd_per_gpu_hour: float
    trace: str  # what was served, in words
    measured_on: str  # what the simulations ran: the whole trace, or which sample of it
    top_sessions: int
    requests: int
    input_tokens: int
    arrival: str
    offered_sessions: float  # concurrent sessions the arrivals offer (see offered_concurrency)
    open_sessions: tuple[float, int]  # sessions open at once in the simulated window: mean, peak (open_sessions)
    fleet_replicas: int
    fleet_chosen_by: str
    outcomes: list[RungOutcome]
    providers: list[ProviderCost]
    plans: list[BreakEven]
    median_context: int
    kv_fit: list[CodecFit]
    kv_load: list[TierLoad]
    wall_s: float = 0.0

    @property
    def fleet_gpus(self) -> int:
        return self.fleet_replicas * self.spec.tp


def offered_concurrency(trace: Trace, arrival: ArrivalModel) -> float:
    """The load in the unit capacity is measured in: concurrent sessions as `--concurrency` sets them (start
    rate × mean recorded session length); for the trace's own clock, open sessions averaged over its span."""
    top = root_sessions(trace) == np.arange(trace.n_sessions)
    if not top.any():
        return 0.0
    if arrival.mode == "concurrency":
        return arrival.value
    if arrival.mode == "rate":
        return arrival.value * float(session_spans(trace)[top].mean())
    start, end = session_intervals(trace, arrival_times(trace, arrival))
    return float((end - start).sum()) / max(float(end.max() - start.min()), 1e-9)


def _rung_job(args: tuple) -> tuple[RungOutcome, dict[int, SimResult]]:
    """One lever: capacity on one replica, then the fewest replicas at the offered load (and the fleet run, when
    the fleet is known up front). Returns every run at the offered load, by replicas, for the same-fleet view."""
    spec, rung, arrival, offered, gpu_hour, fleet = args
    sample, measured = _SHARED["sample"], _SHARED["measured"]
    start = min(offered, 20.0) if offered > 0 else 20.0
    probes: dict[float, SimResult] = {}
    cap = session_capacity(sample, spec, rung, arrival.seed, start, runs=probes)
    runs: dict[int, SimResult] = {}
    if measured is sample and arrival.mode == "concurrency" and arrival.value in probes:
        runs[1] = probes[arrival.value]  # the same run: one replica at the offered concurrency
    sized = size_to_slo(measured, spec, rung, arrival, cap, offered, gpu_hour, runs)
    if fleet and fleet not in runs:
        runs[fleet] = simulate(measured, rung_config(spec, rung, arrival, fleet))
    return RungOutcome(rung, cap, sized, None), runs


def _fleet_job(args: tuple) -> SimResult:
    spec, rung, arrival, replicas = args
    return simulate(_SHARED["measured"], rung_config(spec, rung, arrival, replicas))


def choose_fleet(outcomes: list[RungOutcome], offered: float) -> tuple[int, str]:
    """The size all levers together need; where they miss the SLO, the largest size any lever met it at; where
    none did, one replica per offered session."""
    top = outcomes[-1].sized
    if top.replicas:
        return top.replicas, "the size all levers together need to meet the SLO"
    met = [o.sized.replicas for o in outcomes if o.sized.replicas]
    if met:
        return max(met), "the largest size at which any lever met the SLO"
    return max(int(np.ceil(offered)), 1), "one replica per offered session (no lever met the SLO)"


def build_report(trace: Trace, spec: DeploymentSpec, arrival: ArrivalModel, price_table: dict[str, Any],
                 replicas: int | None = None, workers: int = 2,
                 step: Callable[[str], None] = lambda label: None, sample_size: int = SAMPLE_SESSIONS,
                 ray: str | None = None) -> Report:
    """Everything the report shows, for `trace` offered at `arrival` to the deployment `spec`. `replicas` fixes
    the same-fleet size (default: what all levers together need). Rungs run in `workers` processes, or as
    tasks on the Ray cluster at `ray` ("local": one started here with `workers` CPUs)."""
    wall = time.perf_counter()
    hw = hardware(spec.hardware, spec.hardware_file)
    gpu_hour = float(price_table.get("gpu_hour", {}).get(spec.hardware, 0.0))
    if gpu_hour <= 0:
        raise ValueError(f"prices: no gpu_hour price for hardware '{spec.hardware}'")
    offered = offered_concurrency(trace, arrival)
    sample = sample_sessions(trace, sample_size)
    # sizing and the same fleet run the sample of a large trace at the same offered load; on the trace's own
    # clock, the whole trace (a sample of it would carry less load)
    measured = trace if arrival.mode == "trace" else sample
    jobs = [(spec, r, arrival, offered, gpu_hour, replicas) for r in LADDER]
    with _executor(workers, measured, sample, ray) as pool:
        step("sizing every lever")
        # the costliest rungs (tiers, agent-aware ranking) first, so two workers finish together
        futures = {pool.submit(_rung_job, j): j[1].name for j in reversed(jobs)}
        done = {}
        for fut in as_completed(futures):
            done[futures[fut]] = fut.result()
            step(f"{futures[fut]} sized")
        outcomes, runs = zip(*(done[r.name] for r in LADDER), strict=True)
        fleet, chosen_by = (replicas, "given with --replicas") if replicas else choose_fleet(list(outcomes), offered)
        missing = {i: pool.submit(_fleet_job, (spec, o.rung, arrival, fleet))
                   for i, o in enumerate(outcomes) if fleet not in runs[i]}
        for i, o in enumerate(outcomes):
            o.fleet_run = missing[i].result() if i in missing else runs[i][fleet]
        step("same fleet done")
    _SHARED.clear()
    providers = all_providers(trace, arrival_times(trace, arrival), price_table["providers"]) \
        if trace.has_block_ids else []
    plan_prices = {k: float(v) for k, v in price_table.get("plans", {}).items() if k != "source"}
    top = int((trace.session_parent < 0).sum())
    measured_on = "the whole trace" if measured is trace else (
        f"an evenly spaced sample of {int((measured.session_parent < 0).sum())} of its {top} sessions "
        f"({measured.n_requests:,} requests), at the same offered load")
    median = int(np.median(trace.input_tokens)) if trace.n_requests else 0
    base = rung_config(spec, LADDER[-1], arrival, 1).deployment
    return Report(
        spec=spec, hardware=hw.name, usd_per_gpu_hour=gpu_hour, trace=trace.source, measured_on=measured_on,
        top_sessions=top,
        requests=trace.n_requests, input_tokens=int(trace.input_tokens.sum()), arrival=arrival.describe(),
        offered_sessions=offered, open_sessions=open_sessions(measured, arrival), fleet_replicas=fleet,
        fleet_chosen_by=chosen_by, outcomes=list(outcomes),
        providers=providers, plans=break_even(plan_prices, providers, top), median_context=median,
        kv_fit=codec_fits(base, max(median, 1)), kv_load=tier_loads(replace(base, kv_codec=codec("bf16")), median),
        wall_s=time.perf_counter() - wall,
    )


class _Inline(Executor):
    """`workers=1`: the same code path, run in this process."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        from concurrent.futures import Future

        f: Future = Future()
        f.set_result(fn(*args, **kwargs))
        return f


_SHARED: dict[str, Trace] = {}  # the traces the jobs simulate, handed to each worker once (not pickled per job)


def _share(measured: Trace, sample: Trace) -> None:
    _SHARED.update(measured=measured, sample=sample)


def _executor(workers: int, measured: Trace, sample: Trace, ray: str | None = None) -> Executor:
    if ray is not None:
        from agentkv.cluster.tasks import RayExecutor

        return RayExecutor(ray, _share, (measured, sample), num_cpus=workers)
    if workers > 1:
        return ProcessPoolExecutor(max_workers=workers, initializer=_share, initargs=(measured, sample))
    _share(measured, sample)
    return _Inline()
