"""What one scheduler step costs in seconds, from first principles and a handful of coefficients.

A step runs the batch's new tokens (prefill chunks and one token per decode) through the model. Each op group
costs max(compute time, memory time), groups add up:
- weights: 2·active params FLOPs per token; the weight bytes are read once per step (for MoE, the experts
  the step's tokens touch);
- attention: layer group by layer group from the model's per-layer description (`sim/attention.py`):
  4·heads·head_dim FLOPs per (query, key) pair over the keys each kind lets a query see (whole context,
  window, chunk, compressed entries, top-k), indexer scoring, linear-state updates; memory is the KV read
  (IO-aware: K and V stream through on-chip SRAM once per query tile, scores never leave it) or, for naive
  attention, whole contexts plus the score and probability matrices written to and read back from HBM;
- KV writes for the new tokens, at the codec's bytes per token of every layer;
- tensor parallelism splits FLOPs and bytes and adds two all-reduces per layer.
Tier transfers (lower-tier hits promoted before a prefill) run at the link's bandwidth and overlap with
compute where the engine overlaps them.

Every achievable-fraction and overhead lives in `Coefficients`, the one place measured engine figures replace.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agentkv.catalog import HardwareSpec, ModelSpec
from agentkv.kvcache.sizing import BLOCK_SIZE, CodecSpec, kv_bytes
from agentkv.sim.attention import (
    GroupCost,
    Work,
    decode_work,
    group_costs,
    prefill_work,
    write_bytes_per_token,
)

WEIGHT_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int4": 0.5}
# flash: IO-aware, FlashAttention-3 class; flash2: IO-aware at FlashAttention-2's efficiency (what runs anywhere);
# naive: scores and probabilities through HBM (at long context it could never run: 8k x 98k scores per head)
ATTENTION = ("flash", "flash2", "naive")


@dataclass(slots=True, frozen=True)
class Coefficients:
    """Achievable fractions of peak and fixed overheads. Defaults are typical of vLLM/SGLang on Hopper
    (GEMMs 60-80% of peak FLOP/s, streaming kernels ~85% of HBM bandwidth); attention and the overheads are
    fitted to the published measurements in agentkv/sim/calibration.py."""

    gemm_efficiency: float = 0.70
    # IO-aware attention runs at efficiency · K / (K + overhead_keys) of peak for K keys per query: each query row
    # costs `overhead_keys` keys' worth of fixed work (load Q, rescale, write O), so short contexts run slower.
    # Both kernels fitted (within 3%) to the forward sweep of the FlashAttention-3 paper (Shah et al., arXiv
    # 2407.08608v2, 2024-07-12, Fig. 5d: causal, head dim 128, H100 SXM5, 512-16k tokens, K = tokens / 2):
    attention_efficiency: float = 0.665  # FlashAttention-3: 292, 423, 521, 579, 602, 616 TFLOP/s of 989
    attention_overhead_keys: float = 305.0
    fa2_attention_efficiency: float = 0.357  # FlashAttention-2 (the baseline a user can run anywhere):
    fa2_overhead_keys: float = 204.0  # 191, 260, 298, 319, 333, 335 TFLOP/s
    naive_attention_efficiency: float = 0.35  # unfused matmuls + a separate softmax
    hbm_efficiency: float = 0.85
    link_efficiency: float = 0.80  # host link, NVMe, network
    interconnect_efficiency: float = 0.70  # all-reduce over NVLink / Infinity Fabric
    query_tile: int = 128  # IO-aware kernels re-read K/V once per tile of this many queries
    score_bytes: float = 2.0  # naive attention keeps scores and probabilities in 16-bit
    step_overhead_s: float = 3e-4  # scheduling, sampling, kernel launches (with CUDA graphs for decode)
    # measured overheads (agentkv/sim/calibration.py holds each measurement; `python -m bench.calibration`):
    seq_overhead_s: float = 2.7e-4  # per sequence in a step (sampling, metadata, detokenize): vLLM CI latency
    # benchmark, Llama-3.1-8B on one H200, batch 8, 32 in / 128 out: 833 ms end to end
    collective_latency_s: float = 3.4e-5  # per all-reduce, on top of bytes / bandwidth: NVIDIA NIM benchmark,
    # Llama-3.3-70B fp8 on 2x H100 (TP2), 5000 in / 500 out, concurrency 1: ITL 18.6 ms
    host_load_latency_s: float = 4.8e-3  # per load from host DRAM, on top of bytes / bandwidth: vLLM blog on
    # the KV offloading connector (2025-12-29), Llama-3.1-8B on H100, 512-token prompt: TTFT from DRAM 2x faster
    nvme_load_latency_s: float = 0.0  # unmeasured: no LMCache / Dynamo NVMe figure found with its workload stated
    network_load_latency_s: float = 0.0  # unmeasured here
    memory_utilization: float = 0.90  # of HBM an engine takes
    activation_reserve_bytes: float = 4e9  # per device, for activations and workspace

    def attention_kernel(self, attention: str) -> tuple[float, float]:
        """(efficiency at long context, per-query overhead in keys) of an attention kind's kernel."""
        if attention == "flash":
            return self.attention_efficiency, self.attention_overhead_keys
        if attention == "flash2":
            return self.fa2_attention_efficiency, self.fa2_overhead_keys
        return self.naive_attention_efficiency, 0.0

    def attention_efficiency_at(self, keys: float, attention: str = "flash") -> float:
        """Fraction of peak FLOP/s the kernel reaches when each query reads `keys` keys."""
        eff, overhead = self.attention_kernel(attention)
        return eff * keys / (keys + overhead)


@dataclass(slots=True, frozen=True)
class Deployment:
    hardware: HardwareSpec
    model: ModelSpec
    kv_codec: CodecSpec
    tp: int = 1
    weight_dtype: str = "bf16"
    attention: str = "flash"  # one of ATTENTION
    overlap_transfers: bool = True
    coefficients: Coefficients = field(default_factory=Coefficients)
    # derived once (the simulator prices a million steps a report)
    weight_bytes: float = field(init=False, repr=False, compare=False)
    groups: tuple[GroupCost, ...] = field(init=False, repr=False, compare=False)
    write_bytes_per_token: float = field(init=False, repr=False, compare=False)
    flops: float = field(init=False, repr=False, compare=False)  # dense peak of the replica at the weights' rate
    kernel: tuple[float, float] = field(init=False, repr=False, compare=False)  # Coefficients.attention_kernel

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, got {self.attention!r}")
        if self.weight_dtype not in WEIGHT_BYTES:
            raise ValueError(f"weight dtype must be one of {', '.join(WEIGHT_BYTES)}")
        if self.tp < 1:
            raise ValueError("tp must be >= 1")
        hw, wb = self.hardware, WEIGHT_BYTES[self.weight_dtype]
        object.__setattr__(self, "weight_bytes", self.model.params_total * wb)
        object.__setattr__(self, "groups", group_costs(self.model, self.kv_codec, BLOCK_SIZE, self.tp))
        object.__setattr__(self, "write_bytes_per_token", write_bytes_per_token(self.groups))
        object.__setattr__(self, "flops", self.tp * (hw.fp8_flops if wb <= 1 else hw.bf16_flops))
        object.__setattr__(self, "kernel", self.coefficients.attention_kernel(self.attention))

    def kv_bytes(self, context: int) -> float:
        """One sequence's KV at `context` tokens on this replica (every layer by its kind, TP replicas included)."""
        return kv_bytes(self.model, self.kv_codec, context, self.tp)

    @property
    def kv_capacity_bytes(self) -> float:
        """HBM left for KV across the tp devices: what the engine takes, less weights and activations."""
        c, hw = self.coefficients, self.hardware
        return self.tp * (hw.hbm_bytes * c.memory_utilization - c.activation_reserve_bytes) - self.weight_bytes


@dataclass(slots=True, frozen=True)
class StepShape:
    """What the step-cost model needs of a batch: prefill chunks as (new tokens, tokens before them) and, per
    decode, the context it attends over."""

    prefills: tuple[tuple[int, int], ...] = ()
    decodes: tuple[int, ...] = ()

    @property
    def tokens(self) -> int:
        return sum(n for n, _ in self.prefills) + len(self.decodes)


@dataclass(slots=True)
class StepCost:
    weights: float = 0.0
    attention: float = 0.0
    kv_write: float = 0.0
    communication: float = 0.0
    overhead: float = 0.0

    @property
    def total(self) -> float:
        return self.weights + self.attention + self.kv_write + self.communication + self.overhead


def attention_work(shape: StepShape, d: Deployment) -> tuple[Work, Work]:
    """The step's attention work for its prefill chunks and for its decodes, summed over the layer groups."""
    tile, total = d.coefficients.query_tile, float(sum(shape.decodes))
    pre, dec = Work(), Work()
    for g in d.groups:
        for n, start in shape.prefills:
            pre.add(prefill_work(g, start, n, tile))
        if shape.decodes:
            dec.add(decode_work(g, shape.decodes, total))
    return pre, dec


def step_cost(shape: StepShape, d: Deployment) -> StepCost:
    c, m = d.coefficients, d.model
    tokens = shape.tokens
    if tokens == 0:
        return StepCost()
    hbm = d.tp * d.hardware.hbm_bw * c.hbm_efficiency
    flops = d.flops
    # weights: GEMMs over the step's tokens; weight bytes the tokens touch (all of them for a dense model)
    touched = 1.0 - (1.0 - m.params_active / m.params_total) ** tokens
    weight_time = max(2.0 * m.params_active * tokens / (flops * c.gemm_efficiency),
                      d.weight_bytes * touched / hbm)
    # attention, from the per-layer description
    pre, dec = attention_work(shape, d)
    peak = d.tp * d.hardware.bf16_flops

    def attention_time(w: Work) -> float:
        eff, overhead = d.kernel
        compute = (w.flops + overhead * w.query_flops) / (peak * eff)
        if d.attention != "naive":
            return max(compute, w.io_bytes / hbm)
        # whole contexts read once per chunk, plus scores written, read by softmax, probabilities written and read
        return max(compute, (w.naive_bytes + 4.0 * c.score_bytes * w.scores) / hbm)

    both = Work()
    both.add(pre)
    both.add(dec)
    attn_time = attention_time(both)
    kv_write = tokens * d.write_bytes_per_token / hbm
    comm = 0.0
    if d.tp > 1:
        volume = 2 * m.layers * 2.0 * (d.tp - 1) / d.tp * tokens * m.hidden * 2.0  # two all-reduces per layer
        comm = (volume / (d.hardware.interconnect_bw * c.interconnect_efficiency)
                + 2 * m.layers * c.collective_latency_s)  # and each all-reduce's fixed latency
    overhead = c.step_overhead_s + c.seq_overhead_s * (len(shape.prefills) + len(shape.decodes))
    return StepCost(weight_time, attn_time, kv_write, comm, overhead)  # who it is for: simulator._attribute


def transfer_seconds(bytes_by_link: dict[str, float], d: Deployment) -> float:
    """Time to move KV over each link (they run in parallel): 'host' (DRAM), 'nvme' (disk), 'network' (remote)."""
    hw, c = d.hardware, d.coefficients
    bw = {"host": hw.host_link_bw * d.tp, "nvme": hw.nvme_bw * d.tp, "network": hw.network_bw * d.tp}
    latency = {"host": c.host_load_latency_s, "nvme": c.nvme_load_latency_s, "network": c.network_load_latency_s}
    return max((latency[link] + b / (bw[link] * c.link_efficiency) for link, b in bytes_by_link.items() if b > 0),
               default=0.0)


def prefill_seconds(prompt: int, d: Deployment, chunk: int, cached: int = 0) -> float:
    """A lone request's prefill, chunk by chunk (what its TTFT is on an idle replica, less the first token)."""
    total, start = 0.0, cached
    while start < prompt:
        n = min(chunk, prompt - start)
        total += step_cost(StepShape(prefills=((n, start),)), d).total
        start += n
    return total


def decode_seconds(batch: int, context: int, d: Deployment) -> float:
    """One decode step of `batch` sequences at `context` tokens each."""
    return step_cost(StepShape(decodes=(context,) * batch), d).total
