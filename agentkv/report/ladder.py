"""The mitigation ladder: each lever added to the one before.

baseline (no prefix cache, bf16 KV, FlashAttention-2-class attention: what a user can run at long context; the
scores of unfused attention would not fit in memory) → +IO-aware attention (FlashAttention-3 class) → +prefix
cache in HBM (LRU) →
+fp8 KV → +int4 KV → +DRAM tier → +disk tier → +agent-aware policy.

This file holds what a rung is and how it becomes a simulated deployment; `capacity.py`, `sizing.py` and
`assemble.py` run the simulations that fill the report's views.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np

from agentkv.catalog import HardwareSpec, ModelSpec, hardware, model
from agentkv.kvcache.sizing import codec
from agentkv.report.slo import DEFAULT_OUTPUT_TPS, DEFAULT_SLOWDOWN, describe_slo
from agentkv.sim.simulator import SimConfig, SimResult
from agentkv.sim.speculative import Speculation
from agentkv.sim.stepcost import WEIGHTS, Deployment, mode_name, prefill_seconds
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.trace import Trace


@dataclass(slots=True, frozen=True)
class DeploymentSpec:
    """The modelled deployment the ladder starts from (catalog names, editable from the CLI)."""

    hardware: str = "h200"
    model: str = "llama-3.1-8b"
    tp: int = 1
    weight_dtype: str = "bf16"
    router: str = "prefix-aware"
    dram_gb: float = 0.0  # per replica; 0: half the host DRAM the hardware has per device × tp
    disk_gb: float = 2000.0  # per replica
    slo_ttft_s: float = 20.0
    slo_quantile: float = 90.0  # every percentile bound of the SLO is at this percentile of requests
    slo_output_tps: float = DEFAULT_OUTPUT_TPS  # per-request output tokens/s (0: no bound); see report/slo.py
    slo_tpot_ms: float = 0.0  # time per output token (0: none); where given it replaces slo_output_tps
    slo_e2e_s: float = 0.0  # turn time, request sent to last token (0: no bound)
    slo_slowdown: float = DEFAULT_SLOWDOWN  # agents' pace against the trace's own timing (0: no bound)
    max_replicas: int = 512
    hardware_file: str | None = None
    models_file: str | None = None
    # deployment mode (sim/stepcost.Deployment): experts split whole over the tp devices; attention data-parallel
    # beside them; the routed experts' own format (a mixed FP4-experts + FP8-rest checkpoint)
    ep: bool = False
    dp_attention: bool = False
    expert_dtype: str = ""
    # speculative decoding (sim/speculative.py): tokens drafted a step (0: off), the mean tokens a step emits per
    # sequence (stated, no default: it depends on model, draft and text), the draft's layers (MTP: 1)
    spec_tokens: int = 0
    spec_acceptance: float = 0.0
    spec_draft_layers: int = 1

    def __post_init__(self) -> None:
        for name, ok, rule in (("tp", self.tp >= 1, ">= 1"), ("max_replicas", self.max_replicas >= 1, ">= 1"),
                               ("dram_gb", self.dram_gb >= 0, ">= 0"), ("disk_gb", self.disk_gb >= 0, ">= 0"),
                               ("slo_ttft_s", self.slo_ttft_s > 0, "> 0"),
                               *((k, getattr(self, k) >= 0, ">= 0") for k in ("slo_output_tps", "slo_tpot_ms",
                                                                              "slo_e2e_s")),
                               ("slo_slowdown", self.slo_slowdown == 0 or self.slo_slowdown >= 1, "0 (off) or >= 1"),
                               ("slo_quantile", 0 < self.slo_quantile <= 100, "in (0, 100]")):
            if not ok:
                raise ValueError(f"{name}={getattr(self, name):g}: must be {rule}")
        for name in ("weight_dtype", "expert_dtype"):
            if getattr(self, name) not in WEIGHTS and (name == "weight_dtype" or getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be one of {', '.join(WEIGHTS)}")
        if self.dp_attention and not self.ep:
            raise ValueError("dp_attention=true runs beside expert parallelism: set ep=true too")
        self.speculation  # noqa: B018 (checks the spec_* settings)

    @property
    def speculation(self) -> Speculation | None:
        if not self.spec_tokens and not self.spec_acceptance:
            return None
        if self.spec_tokens < 1 or not self.spec_acceptance:
            raise ValueError("speculative decoding needs spec_tokens >= 1 and spec_acceptance, the mean tokens a "
                             "step emits (e.g. 1.85 for DeepSeek-V3's one MTP token, arXiv 2412.19437 §5.4.3)")
        try:
            return Speculation(self.spec_tokens, self.spec_acceptance, self.spec_draft_layers)
        except ValueError as e:
            raise ValueError(f"spec_tokens={self.spec_tokens}, spec_acceptance={self.spec_acceptance:g}, "
                             f"spec_draft_layers={self.spec_draft_layers}: {e}") from None

    @property
    def slo(self) -> str:
        return describe_slo(self)

    @property
    def mode(self) -> str:
        spec = self.speculation
        return mode_name(self.tp, self.ep, self.dp_attention) + (
            f" + speculative ({spec.draft_tokens} drafted, {spec.acceptance_length:g} emitted a step)" if spec else "")


def modes(spec: DeploymentSpec) -> tuple[DeploymentSpec, ...]:
    """The deployment modes a lever is sized in, the spec's own first: for a MoE model whose experts the catalog
    states, on more than one GPU, and a spec that names no mode: TP + EP and DP-attention + EP on the same GPUs
    (the report's views compare levers at equal GPUs per replica). Disaggregated pools are priced apart
    (sim/disagg.py), not simulated here."""
    if spec.tp == 1 or spec.ep or spec.dp_attention or not catalog_of(spec)[1].routed_params:
        return (spec,)
    return (spec, replace(spec, ep=True), replace(spec, ep=True, dp_attention=True))


def catalog_of(spec: DeploymentSpec) -> tuple[HardwareSpec, ModelSpec]:
    """The spec's hardware and model from the TOML catalogs, read once per process (a report runs hundreds of
    simulations, each needing both; its worker processes read them once each)."""
    return _catalog_entries(spec.hardware, spec.hardware_file, spec.model, spec.models_file)


@functools.lru_cache(maxsize=16)
def _catalog_entries(hw: str, hardware_file: str | None, name: str, models_file: str | None
                     ) -> tuple[HardwareSpec, ModelSpec]:
    return hardware(hw, hardware_file), model(name, models_file)


@dataclass(slots=True, frozen=True)
class Rung:
    name: str
    attention: str
    prefix_cache: bool
    codec: str
    policy: str
    dram: bool
    disk: bool


LADDER = (
    Rung("baseline", "flash2", False, "bf16", "lru", False, False),
    Rung("+IO-aware attention", "flash", False, "bf16", "lru", False, False),
    Rung("+prefix cache (HBM)", "flash", True, "bf16", "lru", False, False),
    Rung("+fp8 KV", "flash", True, "fp8", "lru", False, False),
    Rung("+int4 KV", "flash", True, "int4", "lru", False, False),
    Rung("+DRAM tier", "flash", True, "int4", "lru", True, False),
    Rung("+disk tier", "flash", True, "int4", "lru", True, True),
    Rung("+agent-aware policy", "flash", True, "int4", "agent", True, True),
)


def rung_config(spec: DeploymentSpec, rung: Rung, arrival: ArrivalModel, replicas: int) -> SimConfig:
    hw, m = catalog_of(spec)
    d = Deployment(hw, m, codec(rung.codec), tp=spec.tp,
                   weight_dtype=spec.weight_dtype, attention=rung.attention, ep=spec.ep,
                   dp_attention=spec.dp_attention, expert_dtype=spec.expert_dtype, speculation=spec.speculation)
    dram = (spec.dram_gb * 1e9 if spec.dram_gb else 0.5 * hw.dram_bytes * spec.tp) if rung.dram else 0.0
    return SimConfig(d, replicas=replicas, policy=rung.policy, prefix_cache=rung.prefix_cache, dram_bytes=dram,
                     disk_bytes=spec.disk_gb * 1e9 if rung.disk else 0.0, router=spec.router, arrival=arrival)


def quantile(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else float("nan")


def slo_ttft(res: SimResult, spec: DeploymentSpec) -> float:
    """TTFT at the SLO's percentile (served requests only): what the views show beside "SLO met"."""
    return quantile(res.ttft, spec.slo_quantile)


def prefill_floor(trace: Trace, spec: DeploymentSpec, rung: Rung) -> float:
    """Seconds the SLO-percentile prompt takes to prefill on an idle replica when nothing is cached: without a
    prefix cache no fleet size brings TTFT at that percentile below it. 0 for rungs with a prefix cache."""
    if rung.prefix_cache:
        return 0.0
    cfg = rung_config(spec, rung, ArrivalModel(), 1)
    prompt = int(np.percentile(trace.input_tokens, spec.slo_quantile))
    return prefill_seconds(prompt, cfg.deployment, cfg.max_batched_tokens)
