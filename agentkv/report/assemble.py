"""The report's content, computed: every lever's capacity per replica and size at the SLO, every lever on one
fleet, the same traffic at API prices, and the facts the headline is written from. Renderers only format it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
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
from agentkv.report.pool import executor
from agentkv.report.rungs import (
    RungOutcome,
    bracketed,
    cheapest,
    follow_ups,
    measure_rung,
    mode_job,
    on_whole,
    remedy_job,
    replicas_for,
    serve_job,
    whole_job,
    whole_pair,
)
from agentkv.report.simulated import simulated_on
from agentkv.report.sizing import Sized, size_to_slo
from agentkv.sim.simulator import SimResult
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


# a lever's stages, in order: every mode on the sample, remedies, the whole trace (the sample's size and one fewer
# side by side), a search on from them where they do not bracket the size, the same fleet
MODES, REMEDIES, WHOLE, RESIZE, FLEET = "modes", "remedies", "whole", "resize", "fleet"


@dataclass(slots=True, frozen=True)
class JobTime:
    """One simulation job of the report and the CPU seconds it took in its worker: what a projection to more
    workers schedules (`bench.ray_scale`)."""

    stage: str
    lever: str
    mode: str
    cpu_s: float
    replicas: int = 0  # the fleet a same-fleet or whole-trace run was on (0: a job of several runs)


def _timed(fn: Callable[[tuple], Any], args: tuple) -> tuple[Any, float]:
    cpu = time.process_time()
    out = fn(args)
    return out, time.process_time() - cpu


@dataclass(slots=True)
class _Levers:
    """Every lever's jobs on the pool, each stage submitted as the one before it ends: every (lever, mode) job;
    per lever, the cheapest mode (`cheapest`), then where output speed sets its size, the remedies real engines
    use (`remedy`), then where the modes were chosen on the capacity sample, that mode on the whole trace (its
    sample's size and one fewer side by side, `whole_pair`; searched on in a worker where they do not bracket
    it), then its run on the same fleet as soon as that fleet is known: given, or the top lever's size where it
    met the SLO (else once every lever is sized, `choose_fleet`). Until the top lever is sized on the whole trace,
    the fleet its sample's size gives is run ahead (`guess`: the two agreed at every scale measured), so those runs
    fill the workers while its whole-trace run goes on; a run ahead on another fleet is timed and not used."""

    pool: Executor
    jobs: list[tuple]
    whole: Trace | None  # the trace the modes are sized on again (None: they are not)
    gpus: int | None  # the same fleet's GPUs, once known
    step: Callable[[str], None]
    guess: int | None = None  # the top lever's GPUs on the sample, while its whole-trace size is not known
    flying: dict[int, int] = field(default_factory=dict)  # lever -> replicas of its same-fleet run in flight
    todo: dict[Future, tuple[str, int, int]] = field(default_factory=dict)
    modes: dict[int, tuple[RungOutcome, dict[int, SimResult]]] = field(default_factory=dict)
    pairs: dict[int, tuple[RungOutcome, list[int], dict[int, SimResult]]] = field(default_factory=dict)
    sized: dict[int, tuple[RungOutcome, dict[int, SimResult]]] = field(default_factory=dict)  # by ladder index
    times: list[JobTime] = field(default_factory=list)

    def start(self) -> None:
        """Every (lever, mode) job, the costliest rungs first (so two workers end together)."""
        for i, job in reversed(list(enumerate(self.jobs))):
            self._submit(MODES, i, mode_job, job)

    def run(self, offered: float, tp: int) -> tuple[list[RungOutcome], int, str]:
        """Every later stage as the one before it ends: (outcomes in ladder order, the fleet's GPUs, how it was
        chosen)."""
        given = self.gpus
        while self.todo:
            done = wait(self.todo, return_when=FIRST_COMPLETED)[0]
            for fut in [f for f in self.todo if f in done]:  # in the order submitted: one worker, one order
                self._done(*self.todo.pop(fut), *fut.result())
            if not self.todo and self.gpus is None:
                self._fleet_known(choose_fleet(self.outcomes(), offered, tp)[0])
        outcomes = self.outcomes()
        return outcomes, self.gpus, "given with --replicas" if given else choose_fleet(outcomes, offered, tp)[1]

    def outcomes(self) -> list[RungOutcome]:
        return [self.sized[k][0] for k in sorted(self.sized)]

    @property
    def load(self) -> tuple:
        """(arrival, offered sessions, $/GPU-hour): what every job after the modes is given."""
        return self.jobs[0][2:5]

    def _submit(self, stage: str, i: int, fn: Callable[[tuple], Any], args: tuple, replicas: int = 0) -> None:
        self.todo[self.pool.submit(_timed, fn, args)] = (stage, i, replicas)

    def _time(self, stage: str, out: RungOutcome, cpu_s: float, replicas: int = 0) -> None:
        self.times.append(JobTime(stage, out.rung.name, out.spec.mode, cpu_s, replicas))  # type: ignore[union-attr]

    def _done(self, stage: str, i: int, replicas: int, found: Any, cpu_s: float) -> None:
        if stage == FLEET:
            return self._fleet_done(i, replicas, found, cpu_s)
        if stage == WHOLE and replicas:
            return self._pair_done(i, replicas, found, cpu_s)
        self._time(stage, found[0], cpu_s)
        if stage == MODES:
            self.modes[i] = found
            mine = [k for k, j in enumerate(self.jobs) if j[1] is self.jobs[i][1]]
            if not all(k in self.modes for k in mine):
                return
            i, found = LADDER.index(self.jobs[i][1]), cheapest([self.modes.pop(k) for k in mine])
            if follow_ups(found[0]):
                return self._submit(REMEDIES, i, remedy_job, (found, *self.jobs[mine[0]][2:]))
        if self.whole is not None and stage in (MODES, REMEDIES):
            return self._start_whole(i, found[0])
        self._sized(i, found)

    def _start_whole(self, i: int, chosen: RungOutcome) -> None:
        if i == len(LADDER) - 1 and self.gpus is None and chosen.sized.cost is not None:
            self.guess = chosen.sized.cost.gpus
            for k in self.sized:
                self._to_fleet(k, self.guess)
        pair = whole_pair(self.whole, chosen)  # type: ignore[arg-type]
        if not pair:
            return self._submit(WHOLE, i, whole_job, (chosen, *self.load))
        self.pairs[i] = (chosen, pair, {})
        for r in pair:
            self._submit(WHOLE, i, serve_job, (chosen.spec, chosen.rung, self.load[0], r), r)

    def _pair_done(self, i: int, replicas: int, found: SimResult, cpu_s: float) -> None:
        """Sized here where the pair brackets the size (no simulation: `size_to_slo` reads the two runs), else
        searched on in a worker from them."""
        chosen, pair, runs = self.pairs[i]
        runs[replicas] = found
        self._time(WHOLE, chosen, cpu_s, replicas)
        if len(runs) < len(pair):
            return
        del self.pairs[i]
        if not bracketed(pair, runs, chosen.spec):  # type: ignore[arg-type]
            return self._submit(RESIZE, i, whole_job, (chosen, *self.load, runs))
        arrival, offered, gpu_hour = self.load
        sized = size_to_slo(self.whole, chosen.spec, chosen.rung, arrival, chosen.capacity, offered,  # type: ignore
                            gpu_hour, runs, start=pair[0])
        assert len(runs) == len(pair), "a bracketed size is read from its runs, never simulated here"
        self._sized(i, (RungOutcome(chosen.rung, chosen.capacity, sized, None, chosen.spec), runs))

    def _sized(self, i: int, found: tuple[RungOutcome, dict[int, SimResult]]) -> None:
        self.sized[i] = found
        self.step(f"{LADDER[i].name} sized ({found[0].spec.mode})")  # type: ignore[union-attr]
        top = self.sized.get(len(LADDER) - 1, (None,))[0]
        if self.gpus is None and top is not None and top.sized.cost is not None:
            self._fleet_known(top.sized.cost.gpus)  # what all levers together need: `choose_fleet`'s first rule
        elif self.gpus is not None or self.guess is not None:
            self._to_fleet(i, self.gpus or self.guess)  # type: ignore[arg-type]

    def _fleet_known(self, gpus: int) -> None:
        self.gpus = gpus
        for i in self.sized:
            self._to_fleet(i, gpus)

    def _to_fleet(self, i: int, gpus: int) -> None:
        """Lever `i` on `gpus` GPUs: the fleet (then the run its sizing made, where it has one, is its fleet run and
        only the sized run is kept: the views read no other), or the guess (run ahead unless it was made)."""
        out, runs = self.sized[i]
        n = replicas_for(gpus, out.spec)  # type: ignore[arg-type]  # a wide mode's replicas hold more GPUs
        if out.fleet_run is not None:
            return
        if n in runs:
            if gpus == self.gpus:
                out.fleet_run = runs[n]
                self.sized[i] = (out, {})
        elif self.flying.get(i) != n:
            self.flying[i] = n
            self._submit(FLEET, i, serve_job, (out.spec, out.rung, self.load[0], n), n)

    def _fleet_done(self, i: int, replicas: int, found: SimResult, cpu_s: float) -> None:
        out, runs = self.sized[i]
        self._time(FLEET, out, cpu_s, replicas)
        if self.flying.get(i) == replicas:
            del self.flying[i]
        if out.fleet_run is None:
            runs[replicas] = found
            if self.gpus is not None:
                self._to_fleet(i, self.gpus)


def choose_fleet(outcomes: list[RungOutcome], offered: float, tp: int) -> tuple[int, str]:
    """GPUs: what all levers together need; where they miss the SLO, the most any lever met it on; where none
    did, one `tp`-GPU replica per offered session."""
    top = outcomes[-1].sized
    if top.cost:
        return top.cost.gpus, "the size all levers together need to meet the SLO"
    met = [o.sized.cost.gpus for o in outcomes if o.sized.cost]
    if met:
        return max(met), "the largest size at which any lever met the SLO"
    return max(int(np.ceil(offered)), 1) * tp, "one replica per offered session (no lever met the SLO)"


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
    place(on.whole, arrival)  # every whole-trace run places it so: once here, and the forked workers share it
    with executor(workers, on.traces(), ray) as pool:
        levers = _Levers(pool, jobs, on.whole if on.two_phase else None, replicas * spec.tp if replicas else None, step)
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
        out.append(candidate(c_spec, fitted, fit, future.result()))
    return out
