"""Deployment modes worked by hand: KV room as each mode stores it, and what each mode's collectives cost."""

from __future__ import annotations

import re

import pytest

from agentkv.catalog import hardware, model
from agentkv.kvcache.sizing import codec
from agentkv.sim.disagg import Disaggregated
from agentkv.sim.stepcost import (
    Deployment,
    StepShape,
    communication_seconds,
    decode_seconds,
    prefill_seconds,
    step_cost,
)

# DeepSeek-V3 (R1's shapes): 61 MLA layers of a 512 latent + 64 rope values, bf16: 61 * 576 * 2 = 70,272 B a token
MLA_TOKEN = 61 * 576 * 2
ROUTED = (671e9 - 37e9) / (1 - 8 / 256)  # total - active = routed * (1 - k/E), k = 8 of E = 256
DENSE = 671e9 - ROUTED


def dsv3(mode: str, hw: str = "h200", tp: int = 8, weights: str = "fp8") -> Deployment:
    ep, dp = {"tp": (False, False), "ep": (True, False), "dep": (True, True)}[mode]
    return Deployment(hardware(hw), model("deepseek-v3"), codec("bf16"), tp=tp, weight_dtype=weights, ep=ep,
                      dp_attention=dp)


def test_routed_and_always_active_parameters_follow_from_top_k():
    m = model("deepseek-v3")
    assert m.routed_params == pytest.approx(654.45e9, rel=1e-4)
    assert m.dense_params == pytest.approx(16.55e9, rel=1e-3)
    assert m.dense_params + m.routed_params * 8 / 256 == pytest.approx(37e9)


@pytest.mark.parametrize("mode", ["tp", "ep"])
def test_tp_attention_keeps_the_mla_latent_on_every_rank(mode):
    d = dsv3(mode)
    assert d.kv_bytes(8192) == pytest.approx(8 * MLA_TOKEN * 8192)
    # 8 x (141 GB * 0.9 - 4 GB) less 671 GB of fp8 weights stored once across the ranks
    assert d.kv_capacity_bytes == pytest.approx(8 * (141e9 * 0.9 - 4e9) - 671e9)
    assert d.kv_capacity_bytes / d.kv_bytes(8192) == pytest.approx(67.8, abs=0.1)  # sequences of 8k


def test_dp_attention_stores_the_latent_once_and_replicates_the_dense_weights():
    d = dsv3("dep")
    assert d.kv_bytes(8192) == pytest.approx(MLA_TOKEN * 8192)
    room = 8 * (141e9 * 0.9 - 4e9) - (8 * DENSE + ROUTED)  # every rank holds attention, shared expert, dense layers
    assert d.kv_capacity_bytes == pytest.approx(room)
    assert d.kv_capacity_bytes / d.kv_bytes(8192) == pytest.approx(341.2, abs=0.5)  # 5x the TP8 room
    assert d.mode == "DP-attention + EP8" and dsv3("ep").mode == "TP8 + EP8" and dsv3("tp").mode == "TP8"


def test_collectives_by_mode():
    c = dsv3("tp").coefficients
    bw = 450e9 * c.interconnect_efficiency  # H200 NVLink per direction
    tokens = 64
    all_reduce = 2 * 7 / 8 * tokens * 7168 * 2  # ring all-reduce of the bf16 hidden state, bytes per device
    tp = 61 * 2 * (all_reduce / bw + c.collective_latency_s)
    assert communication_seconds(tokens, dsv3("tp")) == pytest.approx(tp)
    assert communication_seconds(tokens, dsv3("ep")) == pytest.approx(tp)  # ranks hold every token: no dispatch
    a2a = 7 / 8 * tokens * 8 * 7168 * 3 / 8  # k = 8 copies a token: fp8 out, bf16 back, spread over 8 ranks
    assert communication_seconds(tokens, dsv3("dep")) == pytest.approx(61 * (a2a / bw + 2 * c.collective_latency_s))
    # beyond the 8-GPU NVLink domain the same collectives run over the NIC
    wide = dsv3("dep", tp=16)
    assert communication_seconds(tokens, wide) > communication_seconds(tokens, dsv3("dep"))
    assert communication_seconds(tokens, dsv3("dep", hw="gb200", tp=16)) < communication_seconds(tokens, wide)


def test_dp_attention_splits_the_sequences_overhead_over_its_ranks():
    tp, dep = dsv3("ep"), dsv3("dep")
    shape = StepShape(decodes=(2048,) * 512)
    c = dep.coefficients
    assert step_cost(shape, dep).overhead == pytest.approx(c.step_overhead_s + 61 * c.layer_floor_s + c.sequences(64))
    assert step_cost(shape, tp).overhead == pytest.approx(c.step_overhead_s + 61 * c.layer_floor_s + c.sequences(512))


def test_dp_attention_replicated_weights_are_read_by_every_rank():
    """At batch 8 per rank, decode is bound by reading weights: DP attention reads the always-active ones once on
    every device instead of a slice of them."""
    tp, dep = dsv3("ep"), dsv3("dep")
    assert step_cost(StepShape(decodes=(1024,) * 8), dep).weights > step_cost(StepShape(decodes=(1024,) * 8), tp).weights


def test_ep_and_dp_attention_need_a_moe_model_with_its_experts():
    with pytest.raises(ValueError, match="MoE model"):
        Deployment(hardware("h200"), model("llama-3.1-70b"), codec("bf16"), tp=8, ep=True)
    with pytest.raises(ValueError, match="set ep too"):
        Deployment(hardware("h200"), model("deepseek-v3"), codec("bf16"), tp=8, dp_attention=True)


def test_disaggregated_kv_transfer_over_nic_and_nvlink():
    pre, dec = dsv3("ep"), dsv3("dep")
    pd = Disaggregated(pre, dec)
    c = pre.coefficients
    kv = MLA_TOKEN * 8192  # one copy of the prompt's latents: 576 MB
    assert pd.transfer_seconds(8192) == pytest.approx(c.network_load_latency_s + kv / (8 * 50e9 * c.link_efficiency))
    rack = Disaggregated(dsv3("ep", hw="gb200", weights="fp4"), dsv3("dep", hw="gb200", weights="fp4"))
    assert rack.same_domain and not pd.same_domain
    assert rack.transfer_seconds(8192) == pytest.approx(kv / (8 * 900e9 * c.link_efficiency))


def test_prefill_decode_ratio_is_sized_from_both_pools_work():
    pd = Disaggregated(dsv3("ep"), dsv3("dep"))
    pre, dec = pd.gpus_per_request(8192, 1024, 256)
    assert pre == pytest.approx(8 * (prefill_seconds(8192, pd.prefill, 8192) + pd.transfer_seconds(8192)))
    assert dec == pytest.approx(1024 * decode_seconds(256, 8192 + 512, pd.decode) * 8 / 256)
    share = pd.prefill_share(8192, 1024, 256)
    assert share == pytest.approx(pre / (pre + dec))
    # long prompts, short replies: more prefill GPUs; short prompts, long replies: fewer
    assert pd.prefill_share(1024, 8192, 256) < share
    n_pre, n_dec = pd.pools(64, 8192, 1024, 256)
    assert n_pre >= 1 and n_dec >= 1 and abs((n_pre + n_dec) * 8 - 64) <= 8


def test_the_report_sizes_each_lever_in_every_mode_a_moe_model_can_run():
    from agentkv.report.ladder import DeploymentSpec, modes

    moe = DeploymentSpec(model="deepseek-v4-flash", tp=4, weight_dtype="fp8")
    assert [s.mode for s in modes(moe)] == ["TP4", "TP4 + EP4", "DP-attention + EP4"]
    assert [s.mode for s in modes(DeploymentSpec(model="llama-3.1-70b", tp=4))] == ["TP4"]  # dense
    assert [s.mode for s in modes(DeploymentSpec(model="deepseek-v4-flash", tp=1))] == ["TP1"]  # one GPU
    named = DeploymentSpec(model="deepseek-v4-flash", tp=8, ep=True)
    assert modes(named) == (named,)  # a mode the user named is kept


def test_deployment_modes_from_the_command_line():
    from agentkv.cli_errors import UsageError
    from agentkv.commands.report import deployment_spec

    spec = deployment_spec("model=deepseek-v3,tp=8,ep=true,dp_attention=true,expert_dtype=fp4,weight_dtype=fp8",
                           None, None)
    assert (spec.ep, spec.dp_attention, spec.expert_dtype, spec.mode) == (True, True, "fp4", "DP-attention + EP8")
    with pytest.raises(UsageError, match="ep='yes' must be true or false"):
        deployment_spec("ep=yes", None, None)


@pytest.mark.parametrize("bad,message", [("expert_dtype=fp3", "expert_dtype='fp3': must be one of"),
                                         ("dp_attention=true", "set ep=true too")])
def test_bad_modes_are_refused_with_the_setting_named(bad, message):
    from agentkv.cli_errors import UsageError
    from agentkv.commands.report import deployment_spec

    with pytest.raises(UsageError, match=message):
        deployment_spec(f"model=deepseek-v3,tp=8,{bad}", None, None)


@pytest.mark.parametrize("name,fp4,domain", [("b200", 9000e12, 8), ("b300", 13125e12, 8), ("gb200", 10000e12, 72),
                                             ("gb300", 15000e12, 72), ("mi355x", 10000e12, 8), ("h200", 0.0, 8)])
def test_2026_hardware_with_its_fp4_rate_and_nvlink_domain(name, fp4, domain):
    hw = hardware(name)
    assert (hw.fp4_flops, hw.scale_up_gpus) == (fp4, domain)
    if name in ("b300", "gb200", "gb300", "mi355x"):  # the entries issue 28 added date the pages they cite
        assert re.search(r"\b20\d\d-\d\d-\d\d\b", hw.source)


def test_a_rack_scale_domain_keeps_wide_expert_parallelism_on_nvlink():
    """DP-attention + EP over 24 GPUs: inside one GB300 NVL72 the dispatch runs over NVLink; 24 B300s span three
    8-GPU nodes, so the same collectives cross the NIC."""
    rack, nodes = dsv3("dep", hw="gb300", tp=24), dsv3("dep", hw="b300", tp=24)
    assert communication_seconds(2048, rack) < communication_seconds(2048, nodes) / 2
