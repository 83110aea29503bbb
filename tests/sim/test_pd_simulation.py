"""Prefill/decode disaggregation simulated, worked by hand: TTFT is the prefill pool's time plus the KV's
transfer, decode steps carry no prefill, and an agent's next turn waits for the last token; and the chunk budget
trading TTFT for TPOT on a mixed load."""

from __future__ import annotations

import numpy as np
import pytest

from agentkv.catalog import hardware, model
from agentkv.kvcache.sizing import codec, kv_bytes
from agentkv.sim.pd_simulation import PDConfig, simulate_pd
from agentkv.sim.simulator import SimConfig, simulate
from agentkv.sim.stepcost import Deployment, decode_seconds, prefill_seconds
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.builder import TraceBuilder
from agentkv.workload.generator import GeneratorConfig, LogNormal, WindowClass, generate


def dep() -> Deployment:
    return Deployment(hardware("h200"), model("llama-3.1-8b"), codec("bf16"))


def trace_of(requests: list[tuple[float, int, int]], think: float | None = None):
    """One session per (start s, prompt, output); with `think`, all of them one session, each turn `think`
    seconds after the previous reply."""
    b = TraceBuilder(64)
    s = b.add_session("agent", start=0.0) if think is not None else None
    for k, (t, prompt, out) in enumerate(requests):
        sess = s if s is not None else b.add_session(f"s{k}", start=t)
        ids = np.arange(prompt // 64) + (0 if think is not None else k * 10_000)  # a session's turns extend
        b.add_request(sess, t if s is not None else 0.0, prompt, out, ids,
                      **({"think_time": think} if think is not None and k else {}))
    return b.build()


def pd(replicas: tuple[int, int] = (1, 1), **kw) -> PDConfig:
    return PDConfig(SimConfig(dep(), arrival=ArrivalModel("trace"), **kw), *replicas)


def test_ttft_is_prefill_plus_transfer_and_decode_carries_no_prefill():
    trace = trace_of([(0.0, 50_000, 20)])
    d, cfg = dep(), pd()
    r = simulate_pd(trace, cfg)
    # 2 GPUs sit in one 8-GPU NVLink domain: bf16 KV of 50k tokens at NVLink's bandwidth and the link efficiency
    link = d.hardware.interconnect_bw * d.coefficients.link_efficiency
    transfer = kv_bytes(d.model, d.kv_codec, 50_000) / link
    assert cfg.link.transfer_seconds(50_000) == pytest.approx(transfer)
    assert float(r.ttft[0]) == pytest.approx(prefill_seconds(50_000, d, 8192) + transfer, rel=1e-9)
    # 19 tokens after the first: 19 decode steps of one sequence, no prefill chunk in any of them
    steps = sum(decode_seconds(1, 50_001 + k, d) for k in range(19))
    assert float(r.finish[0] - r.first_token[0]) == pytest.approx(steps, rel=1e-3)
    assert r.decode_tokens == 19 and r.prefill_tokens == 50_000
    assert len(r.busy_s) == 2 and r.config.replicas == 2


def test_a_long_prompt_slows_colocated_decodes_but_not_a_decode_pool():
    # a short request decoding while a 100k-token prompt arrives beside it
    trace = trace_of([(0.0, 1_000, 400), (0.5, 100_000, 2)])
    d = dep()
    together = simulate(trace, SimConfig(d, arrival=ArrivalModel("trace")))
    apart = simulate_pd(trace, pd())
    alone = decode_seconds(1, 1_200, d)
    assert together.tpot[0] > 1.5 * alone  # 13 steps of it carried 8k-token prefill chunks
    assert apart.tpot[0] == pytest.approx(alone, rel=0.05)  # one step beside the other's lone decode


def test_an_agents_next_turn_waits_for_the_last_token():
    trace = trace_of([(0.0, 20_000, 300), (5.0, 30_000, 50)], think=2.0)
    r = simulate_pd(trace, pd())
    # (think times are float32 in a trace: the wait is exact to their precision)
    assert float(r.arrival[1]) == pytest.approx(float(r.finish[0]) + 2.0, abs=1e-5)
    assert r.pause[1] == pytest.approx(2.0)
    assert r.cached[1].sum() > 0  # the prefill pool's prefix cache holds the first turn's prompt


def test_a_fleet_beyond_one_nvlink_domain_sends_kv_over_the_nic():
    d = dep()
    near, far = pd((1, 1)).link, pd((4, 5)).link  # 2 GPUs, 9 GPUs: past the H200's 8-GPU domain
    assert near.same_domain and not far.same_domain
    assert far.transfer_seconds(50_000) > 5 * near.transfer_seconds(50_000)
    assert far.transfer_seconds(50_000) == pytest.approx(
        d.coefficients.network_load_latency_s
        + kv_bytes(d.model, d.kv_codec, 50_000) / (d.hardware.network_bw * d.coefficients.link_efficiency))


def test_pools_need_a_replica_each():
    with pytest.raises(ValueError, match="1P \\+ 0D"):
        pd((1, 0))


@pytest.fixture(scope="module")
def mixed():
    """Agentic sessions with long prompts, replies of a few hundred tokens: decodes always beside prefills."""
    return generate(GeneratorConfig(sessions=24, seed=3, turns=LogNormal(8, 0.5),
                                    windows=(WindowClass(1.0, 120_000, LogNormal(30_000, 0.5)),)))


def test_a_smaller_chunk_budget_lowers_p90_tpot_and_raises_ttft(mixed):
    def run(budget: int):  # no prefix cache: every prompt prefilled whole, beside the others' decodes
        return simulate(mixed, SimConfig(dep(), replicas=2, max_batched_tokens=budget, prefix_cache=False,
                                         arrival=ArrivalModel("concurrency", 24)))

    big, small = run(8192), run(512)
    assert np.percentile(small.tpot, 90) < 0.8 * np.percentile(big.tpot, 90)  # 32.5 -> 21.9 ms when written
    assert np.percentile(small.ttft, 90) > np.percentile(big.ttft, 90)


def test_disaggregated_fleet_serves_the_mixed_load_with_decode_only_steps(mixed):
    arrival = ArrivalModel("concurrency", 24)
    together = simulate(mixed, SimConfig(dep(), replicas=3, arrival=arrival))
    apart = simulate_pd(mixed, PDConfig(SimConfig(dep(), arrival=arrival), 1, 2))
    assert not apart.rejected.any()
    assert apart.decode_tokens == together.decode_tokens  # every token after the first, once
    assert np.percentile(apart.tpot, 90) < np.percentile(together.tpot, 90)
    assert apart.hit_rate == pytest.approx(together.hit_rate, abs=0.05)  # prefixes stay on the prefill pool


def test_replies_of_one_token_leave_the_decode_pool_idle():
    r = simulate_pd(trace_of([(0.0, 4_000, 1), (1.0, 6_000, 1)]), pd((1, 2)))
    assert np.all(r.finish == r.first_token) and not r.rejected.any()
    assert r.busy_s[0] > 0 and np.all(r.busy_s[1:] == 0) and r.config.replicas == 3
