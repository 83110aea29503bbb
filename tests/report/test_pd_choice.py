"""The report's choice of deployment per lever where output speed sets the size: the spec's own colocated mode,
a smaller chunk budget, or disaggregated prefill and decode pools, each winning once on one load as the TPOT
bound tightens (Llama-3.1-8B on H200s, prompts of ~30k tokens, no prefix cache: every prompt prefilled whole
beside the decodes). The winners follow from the step-cost model: a recalibration may move which bound each
wins at, not the order."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agentkv.cost.selfhosted import self_hosted_cost
from agentkv.report.capacity import Capacity
from agentkv.report.ladder import LADDER, DeploymentSpec, remedies, rung_config
from agentkv.report.rungs import RungOutcome, follow_ups, measure_rung, remedy, replicas_for
from agentkv.report.sizing import Sized
from agentkv.report.slo import meets_slo
from agentkv.report.stages import choose_fleet
from agentkv.sim.simulator import simulate
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
        assert chosen.spec.fleet_words(chosen.sized.replicas).startswith(f"{pre} prefill + {dec} decode replica")


def test_a_disaggregated_spec_is_checked():
    with pytest.raises(ValueError, match="prefill_share=1: must be in"):
        DeploymentSpec(prefill_share=1.0)
    with pytest.raises(ValueError, match="max_batched_tokens=8: must be >= 16"):
        DeploymentSpec(max_batched_tokens=8)
    assert DeploymentSpec(prefill_share=0.25).pools(8) == (2, 6)
    assert DeploymentSpec(prefill_share=0.25).pools(2) == (1, 1)


def _outcome(spec: DeploymentSpec, replicas: int, met: bool):
    """A lever sized (or best missed) at `replicas` replicas of `spec`, on a real run of a tiny trace."""
    trace = generate(GeneratorConfig(sessions=2, seed=1, turns=LogNormal(2, 0.1)))
    res = simulate(trace, rung_config(spec, LADDER[2], ArrivalModel("concurrency", 2.0), replicas))
    sized = Sized(replicas if met else None, 1.0, self_hosted_cost(res, 3.49) if met else None, res)
    return RungOutcome(LADDER[2], Capacity(1.0, 1.0), sized, None, spec)


def test_a_wide_replica_is_tried_only_where_the_lever_needs_more_gpus_than_it_holds():
    moe = DeploymentSpec(model="qwen3-coder-30b-a3b", tp=2, slo_output_tps=0, slo_slowdown=0)
    wide = follow_ups(_outcome(moe, 6, met=True))  # 12 GPUs: one 8-GPU DEP8 replica might do
    assert [(s.tp, s.ep, s.dp_attention) for s in wide] == [(8, True, True)]
    assert wide[0].mode == "DP-attention + EP8"
    assert follow_ups(_outcome(moe, 4, met=True)) == ()  # 8 GPUs: a DEP8 replica cannot cost less
    assert follow_ups(_outcome(moe, 5, met=False))[0].tp == 8  # missed at 10 GPUs: worth a try
    assert follow_ups(_outcome(DeploymentSpec(model="llama-3.1-8b", tp=2), 6, met=True)) == ()  # dense: no experts
    # the same-fleet view counts GPUs: a DEP8 lever on 16 GPUs puts every TP2 lever on 8 replicas
    levers = [_outcome(moe, 6, met=True), _outcome(replace(moe, tp=8, ep=True, dp_attention=True), 2, met=True)]
    assert choose_fleet(levers, 12.0, 2) == (16, "the size all levers together need to meet the SLO")
    assert replicas_for(16, moe) == 8 and replicas_for(12, levers[1].spec) == 2


def test_remedies_follow_what_one_replica_fewer_misses():
    spec = DeploymentSpec(model="llama-3.1-8b")
    out = _outcome(spec, 3, met=True)
    out.sized.binding = ["p90 output speed 20 tok/s < 30 tok/s"]
    tried = remedies(spec, out.sized)
    assert [(s.max_batched_tokens, s.prefill_share > 0) for s in tried] == [(2048, False), (512, False),
                                                                            (8192, True)]
    out.sized.binding.append("p90 TTFT 25.0 s > 20 s")  # smaller chunks only delay prefill: not tried
    assert [s.prefill_share > 0 for s in remedies(spec, out.sized)] == [True]
    out.sized.binding = ["p90 TTFT 25.0 s > 20 s"]
    assert remedies(spec, out.sized) == ()
    out.sized.binding, out.sized.busy_below = ["p90 output speed 20 tok/s < 30 tok/s"], 0.95
    assert remedies(spec, out.sized) == ()  # one replica fewer was saturated: only GPUs help
    out.sized.busy_below, out.sized.decode_tpot_below_ms = 0.5, 40.0  # the SLO allows 1000 / 30 = 33.3 ms
    assert remedies(spec, out.sized) == ()  # decode steps with no prefill beside them would still miss
    out.sized.decode_tpot_below_ms = 30.0
    assert len(remedies(spec, out.sized)) == 3
