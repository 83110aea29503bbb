"""The report's parts on small inputs: the session sample large traces are searched on, the deployment's
validation."""

from __future__ import annotations

import numpy as np
import pytest

from agentkv.catalog import model, prices
from agentkv.report.assemble import build_report
from agentkv.report.capacity import sample_sessions
from agentkv.report.ladder import DeploymentSpec
from agentkv.workload.arrivals import ArrivalModel, tokens_per_open_second
from agentkv.workload.generator import GeneratorConfig, generate
from agentkv.workload.window import fit_window


def test_sample_keeps_whole_sessions_with_their_subagents_and_block_ids():
    trace = generate(GeneratorConfig(sessions=30, subagent_rate=0.05, seed=3))
    assert (trace.session_parent >= 0).any(), "the workload needs sub-agents for this test"
    sample = sample_sessions(trace, 10)
    sample.validate()
    assert int((sample.session_parent < 0).sum()) == 10
    kept = [n for n in trace.session_names if n in set(sample.session_names)]
    assert kept == sample.session_names  # trace order, whole sessions
    mine, theirs = [], []
    for s, name in enumerate(sample.session_names):
        t = trace.session_names.index(name)
        assert np.array_equal(sample.input_tokens[sample.session == s], trace.input_tokens[trace.session == t])
        mine += [sample.blocks(i) for i in np.flatnonzero(sample.session == s)]
        theirs += [trace.blocks(i) for i in np.flatnonzero(trace.session == t)]
        if sample.session_parent[s] >= 0:  # a sub-agent keeps its parent, renumbered
            parent = trace.session_names[int(trace.session_parent[t])]
            assert sample.session_names[int(sample.session_parent[s])] == parent
    mine, theirs = np.concatenate(mine), np.concatenate(theirs)
    pairs = np.unique(np.stack([mine, theirs]), axis=1)  # the renumbering is one-to-one, and dense
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1] == mine.max() + 1
    assert sample_sessions(trace, 30) is trace


@pytest.mark.parametrize(("field", "value", "message"), [
    ("slo_ttft_s", -1.0, "slo_ttft_s=-1: must be > 0"), ("tp", 0, "tp=0: must be >= 1"),
    ("slo_quantile", 120.0, "slo_quantile=120: must be in (0, 100]"), ("disk_gb", -5.0, "disk_gb=-5: must be >= 0"),
])
def test_deployment_rejects_nonsense_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        DeploymentSpec(**{field: value})


def test_a_trace_larger_than_the_sample_is_simulated_on_the_sample_at_the_same_load():
    """Sizing and the same fleet run the sample (a 40k-request trace would take an hour); what was served is the
    whole trace, and the report says which sample its figures come from."""
    trace = generate(GeneratorConfig(sessions=10, seed=4))
    rep = build_report(trace, DeploymentSpec(), ArrivalModel("concurrency", 3.0), prices(), workers=1, sample_size=5)
    sample = sample_sessions(trace, 5)
    assert rep.measured_on.startswith("an evenly spaced sample of 5 of its 10 sessions")
    assert f"({sample.n_requests:,} requests)" in rep.measured_on
    fitted = fit_window(trace, model(DeploymentSpec().model).context, "compact")[0]  # what the report simulates
    ratio = tokens_per_open_second(sample_sessions(fitted, 5)) / tokens_per_open_second(fitted)
    assert f"its sessions send {ratio:.2f}x the whole trace's input tokens per open second" in rep.measured_on
    assert sample.n_requests < trace.n_requests == rep.requests
    for o in rep.outcomes:
        assert len(o.fleet_run.arrival) == sample.n_requests
        assert o.sized.result is None or len(o.sized.result.arrival) == sample.n_requests


def _outcome(rung, gpus: int | None, sessions: float):
    from agentkv.cost.selfhosted import SelfHostedCost
    from agentkv.report.assemble import RungOutcome
    from agentkv.report.capacity import Capacity
    from agentkv.report.sizing import Sized

    cost = None if gpus is None else SelfHostedCost(gpus, gpus * 1.0, gpus * 3.0, 0.1, 0.01, 1.0, 0.05 * gpus)
    return RungOutcome(rung, Capacity(sessions, 1.0), Sized(gpus, 1.0, cost), None)


@pytest.mark.parametrize(("gpus", "sessions", "expected"), [
    ((None, 4, 2), (0.0, 5.0, 10.0), "the SLO; with it 4 GPUs do"),
    ((4, 4, 2), (5.0, 5.0, 10.0), "prefix cache (HBM): 4 → 2 GPUs, $0.200 → $0.100"),
    ((2, 2, 2), (5.0, 5.0, 10.0), "one GPU serves 5 → 10 concurrent sessions"),
    ((2, 2, 2), (5.0, 5.0, 5.0), "No lever cuts the GPUs the SLO needs or raises the sessions one GPU serves"),
])
def test_the_headline_names_the_lever_with_the_largest_step(gpus, sessions, expected):
    """Reaching the SLO at all beats fewer GPUs, which beats more sessions per GPU; a ladder where nothing
    moves says so rather than printing "2 → 2"."""
    from agentkv.report.headline import best_lever
    from agentkv.report.ladder import LADDER

    ladder = [_outcome(r, g, s) for r, g, s in zip(LADDER[:3], gpus, sessions, strict=True)]
    assert expected in best_lever(ladder, tp=1)


def test_a_value_that_rounds_up_takes_the_next_ranges_digits():
    from agentkv.report.views import Column, fmt

    s, usd = Column("ttft_p99_s", "TTFT p99 s", "s"), Column("usd_per_mtok", "$/Mtok", "usd")
    assert [fmt(s, x) for x in (9.994, 9.996, 999.94, 999.96)] == ["9.99", "10.0", "999.9", "1,000"]
    assert [fmt(usd, x) for x in (0.9994, 0.9996, 99.994, 99.996)] == ["0.999", "1.00", "99.99", "100"]
