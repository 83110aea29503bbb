"""The report's choice of deployment per lever where output speed sets the size: the spec's own colocated mode,
a smaller chunk budget, or disaggregated prefill and decode pools, each winning once on one load as the TPOT
bound tightens (Llama-3.1-8B on H200s, prompts of ~30k tokens, no prefix cache: every prompt prefilled whole
beside the decodes). The winners follow from the step-cost model: a recalibration may move which bound each
wins at, not the order."""

from __future__ import annotations

import pytest

from agentkv.report.assemble import measure_rung, remedy
from agentkv.report.ladder import LADDER, DeploymentSpec, remedies
from agentkv.report.slo import meets_slo
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.generator import GeneratorConfig, LogNormal, WindowClass, generate

SESSIONS = 12.0


@pytest.fixture(scope="module")
def trace():
    return generate(GeneratorConfig(sessions=int(SESSIONS), seed=3, turns=LogNormal(8, 0.5),
                                    windows=(WindowClass(1.0, 120_000, LogNormal(30_000, 0.5)),)))


def choose(trace, tpot_ms: float):
    spec = DeploymentSpec(model="llama-3.1-8b", slo_output_tps=0, slo_tpot_ms=tpot_ms, slo_slowdown=0,
                          max_replicas=6)
    arrival = ArrivalModel("concurrency", SESSIONS)
    tried = measure_rung(trace, trace, spec, LADDER[1], arrival, SESSIONS, 3.49, None)
    return tried[0], remedy(trace, tried, arrival, SESSIONS, 3.49, None)[0]


@pytest.mark.parametrize(("tpot_ms", "chunk", "disaggregated"), [
    (100.0, 8192, False),  # one replica meets it: nothing binds, the spec's own mode stays
    (25.0, 2048, False),  # 3 replicas at 8192-token chunks, 2 at 2048
    (15.0, 8192, True),  # no fleet of up to 6 meets it with chunks in the decode steps; 1 prefill + 1 decode does
])
def test_each_mode_wins_once_as_the_tpot_bound_tightens(trace, tpot_ms, chunk, disaggregated):
    colocated, chosen = choose(trace, tpot_ms)
    assert chosen.spec.max_batched_tokens == chunk
    assert bool(chosen.spec.prefill_share) == disaggregated
    assert chosen.sized.result is not None and meets_slo(chosen.sized.result, chosen.spec)
    if chosen is colocated:
        assert remedies(colocated.spec, colocated.sized) == ()  # tried only where output speed binds
        return
    assert colocated.sized.replicas is None or chosen.sized.replicas < colocated.sized.replicas
    if disaggregated:
        pre, dec = chosen.spec.pools(chosen.sized.replicas)
        assert len(chosen.sized.result.busy_s) == pre + dec == chosen.sized.cost.gpus
        assert f"{pre} prefill + {dec} decode replicas" in chosen.spec.fleet_words(chosen.sized.replicas)


def test_a_disaggregated_spec_is_checked():
    with pytest.raises(ValueError, match="prefill_share=1: must be in"):
        DeploymentSpec(prefill_share=1.0)
    with pytest.raises(ValueError, match="max_batched_tokens=8: must be >= 16"):
        DeploymentSpec(max_batched_tokens=8)
    assert DeploymentSpec(prefill_share=0.25).pools(8) == (2, 6)
    assert DeploymentSpec(prefill_share=0.25).pools(2) == (1, 1)
