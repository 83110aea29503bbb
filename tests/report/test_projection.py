"""The projection of a report's wall time to more workers (bench/_projection.py) schedules the jobs the report
ran: on one worker it is their sum, on many the longest chain of stages, and the same fleet waits for the top
lever's sample size."""

from __future__ import annotations

from agentkv.report.ladder import LADDER
from agentkv.report.stages import FLEET, MODES, WHOLE
from bench._projection import projected_wall


def _jobs(mode_s: float, whole_s: float, fleet_s: float, top_whole_s: float) -> list[dict]:
    out = []
    for r in LADDER:
        out += [dict(stage=MODES, lever=r.name, mode=m, cpu_s=mode_s) for m in ("TP2", "TP2 + EP2")]
        out.append(dict(stage=WHOLE, lever=r.name, mode="TP2", cpu_s=top_whole_s if r is LADDER[-1] else whole_s))
        out.append(dict(stage=FLEET, lever=r.name, mode="TP2", cpu_s=fleet_s))
    return out


def test_one_worker_runs_every_job_in_turn_and_many_run_the_longest_chain():
    jobs = _jobs(10.0, 20.0, 5.0, 20.0)
    assert projected_wall(jobs, 3.0, 1) == 3.0 + sum(j["cpu_s"] for j in jobs)
    assert projected_wall(jobs, 3.0, 64) == 3.0 + 10.0 + 20.0 + 5.0
    assert projected_wall(jobs, 3.0, 2) < projected_wall(jobs, 3.0, 1) / 1.9


def _without_the_top_fleet(jobs: list[dict]) -> list[dict]:
    return [j for j in jobs if not (j["lever"] == LADDER[-1].name and j["stage"] == FLEET)]


def test_the_same_fleet_runs_ahead_once_the_top_levers_sample_size_is_known():
    """Not after the top lever's whole-trace run (its own fleet run is one of its sizing runs), but not before its
    modes end either: their size is the fleet guessed."""
    assert projected_wall(_without_the_top_fleet(_jobs(10.0, 20.0, 5.0, 100.0)), 0.0, 64) == 10.0 + 100.0
    slow_top = [dict(j, cpu_s=50.0) if j["lever"] == LADDER[-1].name and j["stage"] == MODES else j
                for j in _without_the_top_fleet(_jobs(10.0, 20.0, 30.0, 1.0))]
    assert projected_wall(slow_top, 0.0, 64) == 50.0 + 30.0  # the others were sized at 30 s, the guess at 50
