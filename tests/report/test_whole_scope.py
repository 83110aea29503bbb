"""A whole-trace report on a trace larger than its capacity sample: probes and mode choice on the sample, every
size, fleet and price from whole-trace runs, and no simulation run twice (counted through the real simulator)."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import fields, is_dataclass

import numpy as np
import pytest

import agentkv.report.assemble as assemble_mod
import agentkv.report.capacity as capacity_mod
import agentkv.report.ladder as ladder_mod
from agentkv.catalog import model, prices
from agentkv.report.assemble import build_report, measure_rung, on_whole
from agentkv.report.capacity import sample_sessions
from agentkv.report.ladder import LADDER, DeploymentSpec, modes, serve
from agentkv.report.pool import SHARED, share
from agentkv.report.sizing import size_to_slo
from agentkv.sim.simulator import SimResult, simulate
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.generator import GeneratorConfig, generate
from agentkv.workload.window import fit_window


@pytest.fixture
def counted(monkeypatch) -> list[tuple[int, int, str]]:
    """Every simulation the report's modules run: (trace id, requests, config)."""
    calls: list[tuple[int, int, str]] = []

    def counting(trace, cfg, *args, **kwargs):
        calls.append((id(trace), trace.n_requests, repr(cfg)))
        return simulate(trace, cfg, *args, **kwargs)

    for mod in (capacity_mod, ladder_mod):
        monkeypatch.setattr(mod, "simulate", counting)
    return calls


def test_a_whole_report_probes_a_sample_and_prints_only_whole_trace_runs(counted):
    trace = generate(GeneratorConfig(sessions=12, seed=4))
    arrival, spec = ArrivalModel("concurrency", 3.0), DeploymentSpec()
    rep = build_report(trace, spec, arrival, prices(), workers=1, sample_size=12, probe_sessions=4)
    fitted = fit_window(trace, model(spec.model).context, "compact")[0]
    sample = sample_sessions(fitted, 4)
    assert sample.n_requests < fitted.n_requests
    assert rep.measured_on.startswith(f"sized and priced on the whole trace ({fitted.n_requests:,} requests); "
                                      "capacity per replica and each lever's deployment mode on an evenly spaced "
                                      f"4-session sample ({sample.n_requests:,} requests)")
    by_size = Counter(n for _, n, _ in counted)
    assert set(by_size) == {sample.n_requests, fitted.n_requests}
    assert by_size[fitted.n_requests] <= 3 * len(LADDER)  # its size, one fewer and the same fleet at most
    assert max(Counter((t, c) for t, _, c in counted).values()) == 1, "a simulation ran twice"
    for o in rep.outcomes:
        assert o.sized.cost is not None and o.sized.replicas is not None
        again = serve(fitted, o.spec, o.rung, arrival, o.sized.replicas)  # the sized figures: this very run
        assert np.array_equal(again.first_token, o.sized.result.first_token, equal_nan=True)
        assert len(o.fleet_run.arrival) == fitted.n_requests
    stages = Counter(j.stage for j in rep.jobs)  # every job timed, each stage as often as it ran
    assert stages["modes"] == len(LADDER) * len(modes(spec)) and len(LADDER) <= stages["whole"] <= 2 * len(LADDER)
    assert stages["fleet"] <= len(LADDER) and sum(j.cpu_s for j in rep.jobs) > 0
    for o in rep.outcomes:  # every lever on the same GPUs, run once the fleet was known
        assert o.fleet_run.config.replicas * o.spec.tp == rep.fleet_gpus
    kept = _results(rep)  # a run's per-request arrays are held only where a view reads them
    assert len(kept) <= 2 * len(LADDER) < len(counted)
    assert {id(r) for r in kept} <= {id(x) for o in rep.outcomes for x in (o.sized.result, o.fleet_run)}


def _results(obj: object, seen: set[int] | None = None) -> list[SimResult]:
    """Every distinct SimResult reachable from `obj` through dataclass fields, lists, tuples and dicts."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, (str, bytes, int, float, np.ndarray)) or obj is None:
        return []
    seen.add(id(obj))
    if isinstance(obj, SimResult):
        return [obj]
    if isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, (list, tuple, set)):
        children = list(obj)
    elif is_dataclass(obj):
        children = [getattr(obj, f.name) for f in fields(obj)]
    else:
        return []
    return [r for c in children for r in _results(c, seen)]


def test_the_whole_trace_search_starts_from_the_samples_answer_and_finds_the_searchs_size(counted):
    """Started from the sample's size, the whole-trace search lands where a search from the capacity guess does,
    and its first run is at the sample's size."""
    trace = generate(GeneratorConfig(sessions=16, seed=7))
    arrival, rung = ArrivalModel("concurrency", 40.0), LADDER[2]
    spec = DeploymentSpec(slo_output_tps=0.0)  # TTFT and pace alone: a few replicas meet them
    fitted = fit_window(trace, model(spec.model).context, "compact")[0]
    sample = sample_sessions(fitted, 5)
    chosen = measure_rung(sample, sample, spec, rung, arrival, 40.0, 3.49, None)[0]
    assert chosen.sized.replicas and chosen.sized.replicas > 1, "the case needs a fleet to size"
    counted.clear()
    whole, runs = on_whole(fitted, chosen, arrival, 40.0, 3.49)
    assert counted[0][1] == fitted.n_requests and f"replicas={chosen.sized.replicas}," in counted[0][2]
    searched = size_to_slo(fitted, spec, rung, arrival, chosen.capacity, 40.0, 3.49, {})
    assert whole.sized.replicas == searched.replicas
    assert set(runs) == {int(c.split("replicas=")[1].split(",")[0]) for _, _, c in counted[:len(runs)]}


def test_a_candidate_model_is_sized_on_the_whole_trace_too():
    from agentkv.report.assemble import _candidate_job

    trace = generate(GeneratorConfig(sessions=12, seed=4))
    spec = DeploymentSpec()
    fitted = fit_window(trace, model(spec.model).context, "compact")[0]
    sized = _candidate_job((spec, fitted, ArrivalModel("concurrency", 3.0), 3.0, 3.49, 12, 4))
    assert sized.cost is not None and len(sized.result.arrival) == fitted.n_requests


@contextmanager
def _one_thread(workers: int, traces: tuple, ray: str | None = None):
    """One worker thread: jobs run one at a time in the order submitted, so which finish first is fixed (the top
    lever's whole-trace search queues behind the other levers' whole-trace runs)."""
    share(*traces)
    with ThreadPoolExecutor(1) as pool:
        yield pool
    SHARED.clear()


def test_the_same_fleet_is_run_ahead_on_the_samples_size_and_run_again_where_that_was_wrong(counted, monkeypatch):
    """The top lever's sample size is the fleet guessed while its whole-trace sizing goes on; here the whole trace
    needs fewer (a 4-session sample of 16 at 80 concurrent sessions): the runs made ahead are not what the report
    prints, every lever's fleet run is on the final fleet, and still no simulation runs twice."""
    trace = generate(GeneratorConfig(sessions=16, seed=0))
    arrival, spec = ArrivalModel("concurrency", 80.0), DeploymentSpec(slo_output_tps=0.0)
    fitted = fit_window(trace, model(spec.model).context, "compact")[0]
    sample = sample_sessions(fitted, 4)
    guess = measure_rung(sample, sample, spec, LADDER[-1], arrival, 80.0, 3.49, None)[0].sized.cost.gpus
    counted.clear()
    monkeypatch.setattr(assemble_mod, "executor", _one_thread)
    rep = build_report(trace, spec, arrival, prices(), workers=2, sample_size=16, probe_sessions=4)
    assert guess != rep.fleet_gpus, "the case needs a sample that guessed wrong"
    assert max(Counter((t, c) for t, _, c in counted).values()) == 1, "a simulation ran twice"
    fleets = {j.replicas * spec.tp for j in rep.jobs if j.stage == "fleet"}
    assert guess in fleets and rep.fleet_gpus in fleets, "the guessed fleet was run ahead, then the right one"
    for o in rep.outcomes:
        assert o.fleet_run.config.replicas * o.spec.tp == rep.fleet_gpus
        assert len(o.fleet_run.arrival) == fitted.n_requests
