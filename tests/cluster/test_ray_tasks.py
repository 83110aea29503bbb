"""Simulation points as Ray tasks give what they give in this process: the same report, the same sweep."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from agentkv.catalog import model, prices
from agentkv.evaluate.sweep import capacities_arg, parse_lower_tiers, rows, sweep
from agentkv.kvcache.sizing import codec
from agentkv.report.assemble import build_report
from agentkv.report.ladder import DeploymentSpec
from agentkv.report.run import document, settings
from agentkv.report.views import views
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.generator import GeneratorConfig, generate


def _doc(rep) -> dict:
    """The report's document less its timings: which jobs ran is a result, their CPU seconds and the order they
    ended in are not."""
    jobs = sorted((replace(j, cpu_s=0.0) for j in rep.jobs), key=lambda j: (j.stage, j.lever, j.mode))
    rep = replace(rep, wall_s=0.0, jobs=jobs)
    vs = views(rep)
    return document(rep, [], settings(rep), vs)


def test_a_report_run_as_ray_tasks_equals_the_report_run_here(ray_cluster):
    trace = generate(GeneratorConfig(sessions=6, seed=2))
    args = (trace, DeploymentSpec(), ArrivalModel("concurrency", 3.0), prices())
    here = build_report(*args, workers=1, sample_size=4)
    on_ray = build_report(*args, workers=2, sample_size=4, ray="local")
    assert on_ray.measured_on == here.measured_on and "sample of 4" in here.measured_on
    assert _doc(on_ray) == _doc(here)
    for a, b in zip(here.outcomes, on_ray.outcomes, strict=True):
        assert a.capacity.probes == b.capacity.probes  # every probe of the search, not only its answer
        assert np.array_equal(a.fleet_run.first_token, b.fleet_run.first_token, equal_nan=True)


def test_a_whole_report_probed_on_a_sample_as_ray_tasks_equals_the_one_run_here(ray_cluster):
    """Probes and mode choice on a 3-session sample, sizes and the same fleet on the whole trace: three traces,
    two of them one object, handed to the Ray workers."""
    trace = generate(GeneratorConfig(sessions=6, seed=2))
    args = (trace, DeploymentSpec(), ArrivalModel("concurrency", 3.0), prices())
    here = build_report(*args, workers=1, sample_size=6, probe_sessions=3)
    on_ray = build_report(*args, workers=2, sample_size=6, probe_sessions=3, ray="local")
    assert here.measured_on.startswith("sized and priced on the whole trace")
    assert _doc(on_ray) == _doc(here)


def test_a_sweep_run_as_ray_tasks_equals_the_sweep_run_here(ray_cluster):
    trace = generate(GeneratorConfig(sessions=5, seed=1))
    args = (trace, ["lru", "agent"], capacities_arg("16k,64k"), parse_lower_tiers("dram=4x"),
            ArrivalModel("concurrency", 4.0), model("llama-3.1-8b"), codec("bf16"))
    seen: list[str] = []
    here, inf_here = sweep(*args)
    on_ray, inf_ray = sweep(*args, progress=seen.append, ray="local")
    drop = lambda table: [{k: v for k, v in r.items() if k != "seconds"} for r in table]  # noqa: E731
    assert drop(rows(on_ray)) == drop(rows(here)) and inf_ray == inf_here
    assert sorted(seen) == sorted(f"{p.policy} @ {p.gpu}" for p in here)  # progress for every point
