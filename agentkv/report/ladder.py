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
from typing import TYPE_CHECKING

import numpy as np

from agentkv.catalog import HardwareSpec, ModelSpec, hardware, model
from agentkv.kvcache.sizing import codec
from agentkv.report.slo import DEFAULT_OUTPUT_TPS, DEFAULT_SLOWDOWN, describe_slo, slo_misses, tpot_limit_ms
from agentkv.sim.pd_simulation import PDConfig, simulate_pd
from agentkv.sim.simulator import SimConfig, SimResult, simulate
from agentkv.sim.speculative import Speculation
from agentkv.sim.stepcost import WEIGHTS, Deployment, mode_name, prefill_seconds
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.trace import Trace

if TYPE_CHECKING:
    from agentkv.report.sizing import Sized


# vLLM's `vllm serve` default max_num_batched_tokens on a GPU of >= 70 GiB other than an A100 (2048 below that):
# vllm-project/vllm, vllm/engine/arg_utils.py, default_max_num_batched_tokens (read 2026-12-05)
DEFAULT_CHUNK = 8192
CHUNK_BUDGETS = (2048, 512)  # smaller budgets the report tries where output speed sets the size (see assemble)
SATURATED = 0.9  # GPU time busy at one replica fewer above which no remedy is tried (a stated choice)


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
    # prompt tokens a step may carry beside its decodes (vLLM's max_num_batched_tokens, SGLang's
    # chunked_prefill_size): smaller interrupts decodes less, at the price of a longer prefill
    max_batched_tokens: int = DEFAULT_CHUNK
    # the share of replicas in a prefill pool, the rest decoding (sim/pd_simulation.py); 0: colocated
    prefill_share: float = 0.0

    def __post_init__(self) -> None:
        for name, ok, rule in (("tp", self.tp >= 1, ">= 1"), ("max_replicas", self.max_replicas >= 1, ">= 1"),
                               ("max_batched_tokens", self.max_batched_tokens >= 16, ">= 16"),
                               ("prefill_share", 0 <= self.prefill_share < 1, "in [0, 1)"),
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
        """The mode as an engine's flags say it, with speculation, disaggregation and a chunk budget other than the
        engines' default where set."""
        spec = self.speculation
        chunk = f", {self.max_batched_tokens}-token chunks" if self.max_batched_tokens != DEFAULT_CHUNK else ""
        pd = " prefill/decode-disaggregated" if self.prefill_share else ""
        return mode_name(self.tp, self.ep, self.dp_attention) + (
            f" + speculative ({spec.draft_tokens} drafted, {spec.acceptance_length:g} emitted a step)" if spec else ""
        ) + pd + chunk

    def pools(self, replicas: int) -> tuple[int, int]:
        """(prefill, decode) replicas of a disaggregated fleet of `replicas` (at least one of each)."""
        prefill = min(max(round(replicas * self.prefill_share), 1), max(replicas - 1, 1))
        return prefill, max(replicas - prefill, 1)

    def fleet_words(self, replicas: int) -> str:
        """How the headline names a fleet of `replicas` in this mode."""
        if not self.prefill_share:
            return f"{self.mode} replicas"
        pre, dec = self.pools(replicas)
        unit = "replica" if dec == 1 else "replicas"
        return f"{pre} prefill + {dec} decode {unit}, {self.mode.replace(' prefill/decode-disaggregated', '')}"


def modes(spec: DeploymentSpec) -> tuple[DeploymentSpec, ...]:
    """The deployment modes a lever is sized in, the spec's own first: for a MoE model whose experts the catalog
    states, on more than one GPU, and a spec that names no mode: TP + EP and DP-attention + EP on the same GPUs
    (the report's views compare levers at equal GPUs per replica). A wider replica, smaller chunk budgets and
    disaggregated pools are tried after them, where they can win (`assemble.follow_ups`)."""
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


WIDE_GPUS = 8  # the wide replica tried beside the spec's own: DP attention + EP over an 8-GPU node (SGLang's DEP8)


def wide_mode(spec: DeploymentSpec) -> DeploymentSpec | None:
    """DP attention + EP over WIDE_GPUS for a MoE spec on fewer GPUs that names no mode (its KV room grows with
    the DP ranks, its expert reads spread over more GPUs); None where that is not a different mode."""
    if spec.tp >= WIDE_GPUS or spec.ep or spec.dp_attention or spec.prefill_share:
        return None
    if not catalog_of(spec)[1].routed_params:
        return None
    return replace(spec, tp=WIDE_GPUS, ep=True, dp_attention=True)


def remedies(spec: DeploymentSpec, sized: Sized) -> tuple[DeploymentSpec, ...]:
    """What vLLM and SGLang users do when prefill chunks slow the decodes beside them, in the order the report tries
    them: smaller chunk budgets (not where TTFT misses too: they only delay prefill), then prefill and decode on
    separate pools, the prefill pool's share what the lever's own run spent on prefill. Only where output speed
    sets the lever's size or is what it misses, and where one replica fewer was neither saturated nor too slow
    with its prefill time taken out (a bound, not a simulation), so every other report runs no more simulations
    than before."""
    misses = sized.binding if sized.replicas else (slo_misses(sized.result, spec) if sized.result else [])
    if spec.prefill_share or sized.result is None or not any("output speed" in m for m in misses):
        return ()
    if sized.busy_below >= SATURATED:  # the miss below is load: reordering prefill does not remove work
        return ()
    if sized.decode_tpot_below_ms > tpot_limit_ms(spec):  # decode steps alone would still miss there
        return ()
    r = sized.result
    share = r.prefill_s / max(r.prefill_s + r.decode_s + r.cached_s, 1e-9)
    chunks = () if any("TTFT" in m for m in misses) else CHUNK_BUDGETS
    return (*(replace(spec, max_batched_tokens=c) for c in chunks if c < spec.max_batched_tokens),
            replace(spec, prefill_share=round(min(max(share, 0.05), 0.5), 2)))


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
                     disk_bytes=spec.disk_gb * 1e9 if rung.disk else 0.0, router=spec.router, arrival=arrival,
                     max_batched_tokens=spec.max_batched_tokens)


def serve(trace: Trace, spec: DeploymentSpec, rung: Rung, arrival: ArrivalModel, replicas: int) -> SimResult:
    """The rung on `replicas` replicas at `arrival`: one colocated fleet, or prefill and decode pools."""
    cfg = rung_config(spec, rung, arrival, replicas)
    if not spec.prefill_share:
        return simulate(trace, cfg)
    return simulate_pd(trace, PDConfig(cfg, *spec.pools(replicas)))


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
