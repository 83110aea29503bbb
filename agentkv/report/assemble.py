"""The report's content, computed: every lever's capacity per replica and size at the SLO, every lever on one
fleet, the same traffic at API prices, and the facts the headline is written from. Renderers only format it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from agentkv.catalog import hardware, model
from agentkv.cost.plans import BreakEven, break_even
from agentkv.cost.providers import ProviderCost, all_providers, same_model_apis
from agentkv.cost.selfhosted import GpuRates
from agentkv.kvcache.sizing import codec
from agentkv.report.capacity import SAMPLE_SESSIONS
from agentkv.report.ladder import LADDER, DeploymentSpec, modes, rung_config
from agentkv.report.levers import CodecFit, TierLoad, codec_fits, tier_loads
from agentkv.report.load import LoadCurve, load_curve
from agentkv.report.models import Candidate, candidate, candidate_specs, deployment
from agentkv.report.pool import executor, result_of
from agentkv.report.rungs import (
    RungOutcome,
    measure_rung,
    on_whole,
    replicas_for,
)
from agentkv.report.simulated import simulated_on
from agentkv.report.sizing import Sized
from agentkv.report.stages import JobTime, Levers
from agentkv.workload.arrivals import (
    ArrivalModel,
    arrival_times,
    open_sessions,
    place,
    root_sessions,
    session_intervals,
    session_spans,
)
from agentkv.workload.trace import Trace
from agentkv.workload.window import WindowFit, fit_window


@dataclass(slots=True)
class Report:
    spec: DeploymentSpec
    hardware: str
    gpu_rates: GpuRates
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
    model_apis: list[ProviderCost]  # the APIs that sell the deployed model (cost.providers.same_model_apis)
    plans: list[BreakEven]
    median_context: int
    kv_fit: list[CodecFit]
    kv_load: list[TierLoad]
    window: WindowFit  # the trace fitted to the model's context window: what is over it and what became of it
    model_choice: str = ""  # which model the report runs, and why
    candidates: list[Candidate] = field(default_factory=list)  # --candidates: the model view
    jobs: list[JobTime] = field(default_factory=list)  # the simulation jobs, with their CPU seconds
    wall_s: float = 0.0

    @property
    def usd_per_gpu_hour(self) -> float:
        return self.gpu_rates.typical

    @property
    def fleet_gpus(self) -> int:
        return self.fleet_replicas * self.spec.tp

    @property
    def curves(self) -> list[LoadCurve]:
        return [load_curve(o.rung.name, o.capacity, self.usd_per_gpu_hour, self.spec.tp) for o in self.outcomes]


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


def _candidate_job(args: tuple) -> Sized | None:
    """A candidate model on its own fitted trace, every lever on; None where its weights leave no KV room."""
    spec, fitted, arrival, offered, gpu_hour, sample_size, probe_sessions = args
    if deployment(spec).kv_capacity_bytes <= 0:
        return None
    on = simulated_on(fitted, arrival, sample_size, probe_sessions)
    chosen = measure_rung(on.probes, on.modes, spec, LADDER[-1], arrival, offered, gpu_hour, None)[0]
    return on_whole(on.whole, chosen, arrival, offered, gpu_hour)[0].sized if on.two_phase else chosen.sized


def build_report(trace: Trace, spec: DeploymentSpec, arrival: ArrivalModel, price_table: dict[str, Any],
                 replicas: int | None = None, workers: int = 2,
                 step: Callable[[str], None] = lambda label: None, sample_size: int = SAMPLE_SESSIONS,
                 over_window: str = "compact", candidates: tuple[str, ...] = (), model_choice: str = "",
                 ray: str | None = None, probe_sessions: int = SAMPLE_SESSIONS) -> Report:
    """Everything the report shows, for `trace` offered at `arrival` to the deployment `spec`, fitted first to
    the model's context window (`over_window`: workload.window). `replicas` fixes the same-fleet size (default:
    what all levers together need); `candidates` adds the model view. Rungs run in `workers` processes, or as
    tasks on the Ray cluster at `ray` ("local": one started here with `workers` CPUs). `sample_size` top-level
    sessions are simulated (the whole trace where it has no more), capacity on at most `probe_sessions` of them
    (`simulated.simulated_on`)."""
    wall = time.perf_counter()
    recorded = trace
    trace, window = fit_window(trace, model(spec.model, spec.models_file).context, over_window)
    others = [c for c in candidate_specs(candidates, recorded, spec, over_window) if c[0].model != spec.model]
    hw = hardware(spec.hardware, spec.hardware_file)
    rates = GpuRates.of(price_table.get("gpu_hour", {}), spec.hardware)
    gpu_hour = rates.typical
    offered = offered_concurrency(recorded, arrival)
    on = simulated_on(trace, arrival, sample_size, probe_sessions)
    # one job per lever and deployment mode, so the modes of the costliest lever run side by side; the fleet
    # given up front is run with them where the modes are chosen on the trace the report prints
    jobs = [(s, r, arrival, offered, gpu_hour, None if on.two_phase else replicas) for r in LADDER for s in modes(spec)]
    placed, _ = place(on.whole, arrival)  # every whole-trace run places it so: once here, and the forked workers
    placed.lead_in_other_sessions()  # share it, with what their routers read of it (`sim/simulator.py`)
    with executor(workers, on.traces(), ray) as pool:
        levers = Levers(pool, jobs, on.whole if on.two_phase else None, replicas * spec.tp if replicas else None, step)
        levers.start()  # the pool's worker processes are forked by now: no thread of ours is copied into them
        # the API prices replay the whole trace in the driver (~50 CPU-s at 449k requests): beside the simulations
        api = beside(api_costs, recorded, arrival, price_table, spec.model)
        outcomes, gpus, chosen_by = levers.run(offered, spec.tp)
        step("same fleet done")
        models_view = _model_view(pool, candidates, others, (spec, trace, window, outcomes[-1].sized),
                                  (arrival, offered, gpu_hour, sample_size, probe_sessions), step)
    providers, apis = api.result()
    plan_prices = {k: float(v) for k, v in price_table.get("plans", {}).items() if k not in ("source", "as_of")}
    top = int((trace.session_parent < 0).sum())
    median = int(np.median(trace.input_tokens)) if trace.n_requests else 0
    base = rung_config(spec, LADDER[-1], arrival, 1).deployment
    return Report(
        spec=spec, hardware=hw.name, gpu_rates=rates, trace=recorded.source, measured_on=on.describe(trace),
        top_sessions=top,
        requests=recorded.n_requests, input_tokens=int(recorded.input_tokens.sum()), arrival=arrival.describe(),
        offered_sessions=offered, open_sessions=open_sessions(on.whole, arrival),
        fleet_replicas=replicas_for(gpus, spec),
        fleet_chosen_by=chosen_by, outcomes=outcomes, jobs=levers.times,
        providers=providers, model_apis=apis, plans=break_even(plan_prices, providers, top), median_context=median,
        kv_fit=codec_fits(base, max(median, 1)), kv_load=tier_loads(replace(base, kv_codec=codec("bf16")), median),
        window=window, model_choice=model_choice, candidates=models_view, wall_s=time.perf_counter() - wall,
    )


def beside(fn: Callable[..., Any], *args: Any) -> Future:
    """`fn(*args)` in a daemon thread of this process: an interrupted report exits without waiting for it."""
    out: Future = Future()

    def run() -> None:
        try:
            out.set_result(fn(*args))
        except BaseException as e:  # handed to whoever reads the result
            out.set_exception(e)

    threading.Thread(target=run, daemon=True).start()
    return out


def api_costs(recorded: Trace, arrival: ArrivalModel, price_table: dict[str, Any], model_name: str
              ) -> tuple[list[ProviderCost], list[ProviderCost]]:
    """The same traffic at every API's prices, and at those of the APIs that sell the deployed model: each replays
    the trace as placed (none where it has no block ids to replay)."""
    if not recorded.has_block_ids:
        return [], []
    placed = place(recorded, arrival)
    return all_providers(*placed, price_table["providers"]), same_model_apis(*placed, price_table, model_name)


def _model_view(pool: Executor, names: tuple[str, ...], others: list, deployed: tuple, load: tuple,
                step: Callable[[str], None]) -> list[Candidate]:
    """The candidates in the order named: the deployed model from the ladder's last rung, the others sized in
    the workers on their own fitted traces."""
    spec, trace, window, sized = deployed
    futures = {c[0].model: (c, pool.submit(_candidate_job, (c[0], c[1], *load))) for c in others}
    out = []
    for name in names:
        if name == spec.model:
            out.append(candidate(spec, trace, window, sized))
            continue
        (c_spec, fitted, fit), future = futures[name]
        step(f"candidate {name} sized")
        out.append(candidate(c_spec, fitted, fit, result_of(pool, future)))
    return out
