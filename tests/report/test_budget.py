"""Whole by default: the report simulates the whole trace when its projected time fits --budget, else a sample."""

from __future__ import annotations

import subprocess
import sys

from agentkv.report.budget import choose_scope
from agentkv.report.capacity import SAMPLE_SESSIONS
from agentkv.report.ladder import DeploymentSpec
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.generator import GeneratorConfig, generate


def test_whole_trace_within_budget_else_the_sample_with_the_projection():
    trace = generate(GeneratorConfig(sessions=SAMPLE_SESSIONS + 10, seed=5))
    arrival = ArrivalModel("concurrency", 20.0)
    roomy = choose_scope(trace, DeploymentSpec(), arrival, budget_s=1e9, workers=2)
    assert roomy.sample_size == 0 and roomy.projected_s > 0
    assert "whole trace" in roomy.describe()
    tight = choose_scope(trace, DeploymentSpec(), arrival, budget_s=roomy.projected_s / 100, workers=2)
    assert tight.sample_size == SAMPLE_SESSIONS
    assert f"{tight.projected_s:.0f} s" in tight.describe() and "−34% to +70%" in tight.describe()


def test_a_trace_no_larger_than_the_sample_is_simulated_whole_without_a_probe():
    scope = choose_scope(generate(GeneratorConfig(sessions=8)), DeploymentSpec(), ArrivalModel(), 1e-9, 2)
    assert scope.sample_size == 0 and scope.projected_s == 0.0
    assert scope.describe() == f"simulating the whole trace (no more than {SAMPLE_SESSIONS} top-level sessions)"


def test_budget_flag_is_checked():
    p = subprocess.run([sys.executable, "-m", "agentkv.cli", "report", "--budget", "0"], capture_output=True,
                       text=True)
    assert p.returncode == 2 and "--budget" in p.stderr and "Traceback" not in p.stderr
