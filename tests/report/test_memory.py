"""What a report's simulation leaves behind: its result, not the policy cores it ran (a policy's way back to its
core is weak, so no reference cycle keeps them for a full collection; with a strong one, a worker running
simulation after simulation grew by each)."""

from __future__ import annotations

import gc
import tracemalloc

from agentkv.report.ladder import LADDER, DeploymentSpec, serve
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.generator import GeneratorConfig, generate


def _arrays(res) -> int:
    return sum(getattr(res, f).nbytes for f in ("arrival", "first_token", "finish", "prompt", "output", "cached",
                                                "replica", "preemptions", "rejected", "over_window", "busy_s",
                                                "pause", "recorded_s"))


def test_a_simulation_holds_only_its_result_once_it_returns():
    trace = generate(GeneratorConfig(sessions=40, seed=3))
    run = (trace, DeploymentSpec(), LADDER[-1], ArrivalModel("concurrency", 8.0))
    serve(*run, 1)  # out of the count: the catalogs and lazy imports, read once per process, and the trace's
    # placement (kept for the next simulation of the same trace: arrivals.place)
    gc.collect()
    gc.disable()  # no collection but the report's own may free the cycles
    tracemalloc.start()
    try:
        res = serve(*run, 2)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        gc.enable()
    assert peak > 8 * _arrays(res)  # the run itself took far more than its result
    assert held < 2 * _arrays(res) + 2**18, (held, _arrays(res))
