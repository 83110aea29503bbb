"""The report's parts on small inputs: the session sample large traces are searched on, the deployment's
validation."""

from __future__ import annotations

import numpy as np
import pytest

from agentkv.report.capacity import sample_sessions
from agentkv.report.ladder import DeploymentSpec
from agentkv.workload.generator import GeneratorConfig, generate


def test_sample_keeps_whole_sessions_with_their_subagents_and_block_ids():
    trace = generate(GeneratorConfig(sessions=30, subagent_rate=0.05, seed=3))
    assert (trace.session_parent >= 0).any(), "the workload needs sub-agents for this test"
    sample = sample_sessions(trace, 10)
    sample.validate()
    assert int((sample.session_parent < 0).sum()) == 10
    kept = [n for n in trace.session_names if n in set(sample.session_names)]
    assert kept == sample.session_names  # trace order, whole sessions
    for s, name in enumerate(sample.session_names):
        t = trace.session_names.index(name)
        assert np.array_equal(sample.input_tokens[sample.session == s], trace.input_tokens[trace.session == t])
        mine = np.concatenate([sample.blocks(i) for i in np.flatnonzero(sample.session == s)])
        theirs = np.concatenate([trace.blocks(i) for i in np.flatnonzero(trace.session == t)])
        assert np.array_equal(mine, theirs)
        if sample.session_parent[s] >= 0:  # a sub-agent keeps its parent, renumbered
            parent = trace.session_names[int(trace.session_parent[t])]
            assert sample.session_names[int(sample.session_parent[s])] == parent
    assert sample_sessions(trace, 30) is trace


@pytest.mark.parametrize(("field", "value", "message"), [
    ("slo_ttft_s", -1.0, "slo_ttft_s=-1: must be > 0"), ("tp", 0, "tp=0: must be >= 1"),
    ("slo_quantile", 120.0, "slo_quantile=120: must be in (0, 100]"), ("disk_gb", -5.0, "disk_gb=-5: must be >= 0"),
])
def test_deployment_rejects_nonsense_naming_the_field(field, value, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        DeploymentSpec(**{field: value})
