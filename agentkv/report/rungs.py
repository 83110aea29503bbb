"""One lever's simulations: its capacity and size in one deployment mode, the cheapest mode, the remedies real
engines use, the whole-trace stage from the sample's answer, and the jobs a report's workers run for them (each
reads the traces its worker holds by name, `pool.SHARED`)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from agentkv.report.capacity import Capacity, floor_miss, session_capacity
from agentkv.report.ladder import DeploymentSpec, Rung, modes, remedies, serve, wide_mode
from agentkv.report.pool import SHARED
from agentkv.report.sizing import Sized, resize, size_to_slo
from agentkv.report.slo import meets_slo
from agentkv.sim.simulator import SimResult
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.trace import Trace


@dataclass(slots=True)
class RungOutcome:
    rung: Rung
    capacity: Capacity
    sized: Sized
    fleet_run: SimResult | None  # at the same-fleet size, where known
    spec: DeploymentSpec | None = None  # the deployment mode it was sized in: the cheapest meeting the SLO


def mode_job(args: tuple) -> tuple[RungOutcome, dict[int, SimResult]]:
    spec, rung, arrival, offered, gpu_hour, fleet = args
    return _measure_mode(SHARED["probes"], SHARED["modes"], spec, rung, arrival, offered, gpu_hour, fleet)


REMEDY_RUNS = 5  # simulations a follow-up's size search may take: a walk from the lever's size and a bisection


def remedy_job(args: tuple) -> tuple[RungOutcome, dict[int, SimResult]]:
    return remedy(SHARED["modes"], *args)


def whole_job(args: tuple) -> tuple[RungOutcome, dict[int, SimResult]]:
    return on_whole(SHARED["whole"], *args)


def serve_job(args: tuple) -> SimResult:
    spec, rung, arrival, replicas = args
    return serve(SHARED["whole"], spec, rung, arrival, replicas)


def on_whole(whole: Trace, chosen: RungOutcome, arrival: ArrivalModel, offered: float, gpu_hour: float,
             runs: dict[int, SimResult] | None = None) -> tuple[RungOutcome, dict[int, SimResult]]:
    """A lever in the mode chosen on the capacity sample, sized on the whole trace (`sizing.resize`), from the
    whole-trace `runs` made so far (by replicas)."""
    spec = chosen.spec
    assert spec is not None  # _measure_mode names the mode of every outcome
    sized, runs = resize(whole, spec, chosen.rung, arrival, chosen.capacity, chosen.sized, offered, gpu_hour, runs)
    return RungOutcome(chosen.rung, chosen.capacity, sized, None, spec), runs


def whole_pair(whole: Trace, chosen: RungOutcome) -> list[int]:
    """What `resize` simulates first when the sample was right, run side by side: the sample's size and one fewer
    (a disaggregated fleet has two replicas at least). None where the sample found no size or no size can meet
    the SLO on the whole trace (`resize` knows that without a simulation)."""
    r, spec = chosen.sized.replicas, chosen.spec
    assert spec is not None
    if r is None or floor_miss(whole, spec, chosen.rung) is not None:
        return []
    return [r] + ([r - 1] if r - 1 > (1 if spec.prefill_share else 0) else [])


def bracketed(pair: list[int], runs: dict[int, SimResult], spec: DeploymentSpec) -> bool:
    """Whether the pair settles the size: the sample's size meets the SLO and one fewer misses or is no fleet."""
    return meets_slo(runs[pair[0]], spec) and (len(pair) == 1 or not meets_slo(runs[pair[1]], spec))


def follow_ups(out: RungOutcome) -> tuple[DeploymentSpec, ...]:
    """What a lever's cheapest same-GPU mode is tried against: the wide replica where the lever needs more GPUs
    than one holds (below that it cannot cost less), then the remedies where output speed sets its size."""
    if out.spec is None or out.sized.result is None:
        return ()
    wide = wide_mode(out.spec)
    gpus = out.sized.cost.gpus if out.sized.cost else out.sized.result.config.replicas * out.spec.tp
    return ((wide,) if wide and gpus > wide.tp else ()) + remedies(out.spec, out.sized)


def remedy(measured: Trace, tried: tuple[RungOutcome, dict[int, SimResult]], arrival: ArrivalModel, offered: float,
           gpu_hour: float, fleet: int | None) -> tuple[RungOutcome, dict[int, SimResult]]:
    """A lever in each of its `follow_ups` (the wide replica, smaller chunk budgets, disaggregated pools): the one
    meeting the SLO on the fewest GPUs, or the lever as it was. Each is searched from the lever's own GPUs (met,
    or the closest miss) and only below the fewest GPUs met so far, or up to the most the lever tried, in
    REMEDY_RUNS simulations at most; each keeps the lever's capacity per replica (a disaggregated fleet has no
    one-replica probe)."""
    best, runs = tried
    base = best.spec
    for spec in follow_ups(best):
        if best.sized.cost is not None:
            cap = (best.sized.cost.gpus - 1) // spec.tp
        else:
            cap = max(runs) * base.tp // spec.tp  # type: ignore[union-attr]
        if cap < (2 if spec.prefill_share else 1):
            continue
        at = best.sized.result.config.replicas * best.sized.result.config.deployment.tp  # type: ignore[union-attr]
        hint = replace(best.capacity, sessions_per_replica=offered * spec.tp / at)
        found: dict[int, SimResult] = {}
        sized = size_to_slo(measured, replace(spec, max_replicas=cap), best.rung, arrival, hint, offered, gpu_hour,
                            found, max_runs=REMEDY_RUNS)
        if sized.cost is not None:
            best, runs = RungOutcome(best.rung, best.capacity, sized, None, spec), found
    if fleet and best.spec is not base:  # the same-fleet view's GPUs (`fleet` replicas of the lever's own mode)
        n = replicas_for(fleet * base.tp, best.spec)  # type: ignore[union-attr]
        if n not in runs:
            runs[n] = serve(measured, best.spec, best.rung, arrival, n)  # type: ignore[arg-type]
    return best, runs


def replicas_for(gpus: int, spec: DeploymentSpec) -> int:
    """Replicas of `spec`'s mode on `gpus` GPUs (rounded up: the same-fleet view never gives a lever fewer)."""
    return -(-gpus // spec.tp)


def measure_rung(sample: Trace, measured: Trace, spec: DeploymentSpec, rung: Rung, arrival: ArrivalModel,
                 offered: float, gpu_hour: float, fleet: int | None) -> tuple[RungOutcome, dict[int, SimResult]]:
    """One lever in each deployment mode (`ladder.modes`); the cheapest $/Mtok meeting the SLO wins, the spec's
    own mode where none does."""
    return cheapest([_measure_mode(sample, measured, s, rung, arrival, offered, gpu_hour, fleet)
                     for s in modes(spec)])


def cheapest(tried: list[tuple[RungOutcome, dict[int, SimResult]]]) -> tuple[RungOutcome, dict[int, SimResult]]:
    """Of one lever's modes (the spec's own first), the cheapest $/Mtok meeting the SLO; the first where none does."""
    met = [t for t in tried if t[0].sized.cost is not None]
    return min(met, key=lambda t: t[0].sized.cost.usd_per_mtok_blended) if met else tried[0]  # type: ignore[union-attr]


def _measure_mode(sample: Trace, measured: Trace, spec: DeploymentSpec, rung: Rung, arrival: ArrivalModel,
                  offered: float, gpu_hour: float, fleet: int | None) -> tuple[RungOutcome, dict[int, SimResult]]:
    """One lever in one mode: capacity on one replica, then the fewest replicas at the offered load (and the
    fleet run, when the fleet is known up front). Returns every run at the offered load, by replicas, for the
    same-fleet view."""
    start = min(offered, 20.0) if offered > 0 else 20.0
    probes: dict[float, SimResult] = {}
    cap = session_capacity(sample, spec, rung, arrival.seed, start, runs=probes)
    runs: dict[int, SimResult] = {}
    if measured is sample and arrival.mode == "concurrency" and arrival.value in probes:
        runs[1] = probes[arrival.value]  # the same run: one replica at the offered concurrency
    sized = size_to_slo(measured, spec, rung, arrival, cap, offered, gpu_hour, runs)
    if fleet and fleet not in runs:
        runs[fleet] = serve(measured, spec, rung, arrival, fleet)
    return RungOutcome(rung, cap, sized, None, spec), runs
