"""What one scheduler step costs in seconds, from first principles and a handful of coefficients.

A step runs the batch's new tokens (prefill chunks and one token per decode) through the model. Each op group
costs max(compute time, memory time), groups add up:
- weights (`weight_seconds`): the always-active ones (attention, shared experts, dense layers) as one GEMM
  over the step's tokens, read once per step; a MoE's routed experts as grouped GEMMs at the efficiency their
  tokens per expert allow, reading only the experts the step's tokens touch;
- attention: layer group by layer group from the model's per-layer description (`sim/attention.py`):
  4·heads·head_dim FLOPs per (query, key) pair over the keys each kind lets a query see (whole context,
  window, chunk, compressed entries, top-k), indexer scoring, linear-state updates; memory is the KV read
  (IO-aware: K and V stream through on-chip SRAM once per query tile, scores never leave it) or, for naive
  attention, whole contexts plus the score and probability matrices written to and read back from HBM;
- KV writes for the new tokens, at the codec's bytes per token of every layer;
- collectives (`communication_seconds`) by deployment mode: two all-reduces a layer under TP attention (with
  or without EP), dispatch and combine under DP attention + EP; over NVLink or, beyond the scale-up domain, RDMA;
- fixed costs: the step's, a floor per layer (launches, small-GEMM latency) and a per-sequence term that
  saturates with the batch.
Tier transfers (lower-tier hits promoted before a prefill) run at the link's bandwidth and overlap with
compute where the engine overlaps them.

Every achievable-fraction and overhead lives in `Coefficients`, the one place measured engine figures replace.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np

from agentkv.catalog import HardwareSpec, ModelSpec
from agentkv.kvcache.sizing import BLOCK_SIZE, CodecSpec, kv_bytes
from agentkv.sim.attention import (
    DecodeTable,
    GroupCost,
    Work,
    chunk_work,
    group_costs,
    write_bytes_per_token,
)
from agentkv.sim.speculative import Speculation

# weights: bytes per parameter (block scales included) and the tensor-core rate their GEMMs run at where the
# hardware has it. NVFP4: 4-bit values + one fp8 scale per 16 (NVIDIA, "Introducing NVFP4", developer blog,
# 2025-06-24); MXFP4: + one 8-bit scale per 32 (OCP Microscaling spec v1.0, 2023-09). int4: W4A16 (GPTQ/AWQ).
WEIGHTS: dict[str, tuple[float, str]] = {
    "bf16": (2.0, "bf16"), "fp16": (2.0, "bf16"), "fp8": (1.0, "fp8"), "int4": (0.5, "bf16"),
    "nvfp4": (0.5625, "fp4"), "mxfp4": (0.53125, "fp4"), "fp4": (0.5625, "fp4"),
}
# flash: IO-aware, FlashAttention-3 class; flash2: IO-aware at FlashAttention-2's efficiency (what runs anywhere);
# naive: scores and probabilities through HBM (at long context it could never run: 8k x 98k scores per head)
ATTENTION = ("flash", "flash2", "naive")


@dataclass(slots=True, frozen=True)
class Coefficients:
    """Achievable fractions of peak and fixed overheads. Defaults are typical of vLLM/SGLang on Hopper
    (GEMMs 60-80% of peak FLOP/s, streaming kernels ~85% of HBM bandwidth); attention and the overheads are
    fitted to the published measurements in agentkv/sim/calibration.py (FIT rows; VALIDATION rows are held
    back)."""

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
    # fitted together on the FIT rows of agentkv/sim/calibration.py (dense vLLM / NIM rows, DeepSeek-R1 on B200,
    # H200 and MI355X from InferenceMAX; `python -m bench.calibration` prints them beside the VALIDATION rows):
    layer_floor_s: float = 1.5e-5  # per layer per step: kernel launches (CUDA graphs on decode) and the latency
    # of its small GEMMs, the floor a many-layer model with few active parameters hits at low batch
    seq_overhead_s: float = 4.65e-4  # per sequence in a step (sampling, metadata, detokenize) at small batches
    seq_saturation: float = 8.73  # ... saturating: n sequences cost seq_overhead_s · n / (1 + n / this), so a
    # step of thousands pays ~4 ms, not thousands of times the batch-8 figure (batched sampling and metadata)
    # a routed-expert layer's fused-experts call (routing top-k, token alignment, two grouped GEMMs, activation)
    # never runs faster than this at few tokens, whatever bytes it reads: vLLM's benchmark_moe.py kernel time at
    # batch 1 on H100, 29.45 us for Qwen3-Next-80B FP8 TP4 (experts of 0.8 MB a rank: 10 read in ~3 us; vLLM PR
    # #44830, 2026-06-08) and 40.4 us for Qwen3-30B-A3B FP8 TP1 (vLLM PR #24700, 2025-09-11). Not fitted.
    moe_layer_floor_s: float = 2.945e-5
    # per Gated-DeltaNet (linear-attention) layer per step, beside layer_floor_s: its decode runs two input
    # projections, the conv1d state update, gating, the recurrence, a gated norm and the output projection as
    # separate small kernels (vLLM's qwen_gdn_linear_attn; the gating + recurrence pair alone ~5 us on H200, vLLM
    # PR #35777, 2026-03-02). Fitted on Qwen3-Coder-Next's batch-1 decode (calibration.py, FIT row).
    linear_layer_floor_s: float = 4.1e-5
    moe_gemm_efficiency: float = 0.432  # grouped expert GEMMs with many tokens per expert, of dense peak
    moe_rows_half: float = 134.0  # tokens per expert at which a grouped GEMM reaches half that
    expert_imbalance: float = 1.0  # busiest EP rank's expert load over the mean: fitted at 1.0, the rows' engines
    # balance experts (EPLB, redundant experts) at these batches; set it above 1 for an engine that does not
    collective_latency_s: float = 3.62e-5  # per collective (all-reduce, dispatch, combine) on top of bytes / bandwidth
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

    def moe_efficiency_at(self, rows: float) -> float:
        """Fraction of peak a grouped expert GEMM reaches with `rows` tokens per expert: a GEMM tile of few rows
        wastes most of the tensor core (DeepGEMM / CUTLASS grouped GEMM), many rows approach a dense GEMM."""
        return self.moe_gemm_efficiency * rows / (rows + self.moe_rows_half)

    def sequences(self, n: float) -> float:
        """Per-sequence overhead of a step of n sequences (seconds): linear at small n, saturating at large."""
        return self.seq_overhead_s * n / (1.0 + n / self.seq_saturation)


def mode_name(tp: int, ep: bool, dp_attention: bool) -> str:
    """A deployment mode as a serving engine's flags would say it."""
    if dp_attention:
        return f"DP-attention + EP{tp}"
    return f"TP{tp} + EP{tp}" if ep else f"TP{tp}"


@dataclass(slots=True, frozen=True)
class Deployment:
    """One replica: `tp` devices. Modes: tensor parallel (every weight split over the tp devices); + `ep` (the
    routed experts split whole over ep = tp devices, tokens dispatched to them and combined back all-to-all);
    + `dp_attention` (each device runs attention for its own sequences with its own KV, the MLA latent stored
    once, not on every rank; the always-active weights replicated on every device). `expert_dtype` sets the
    routed experts' format apart (a mixed checkpoint: FP4 experts, FP8 rest)."""

    hardware: HardwareSpec
    model: ModelSpec
    kv_codec: CodecSpec
    tp: int = 1
    weight_dtype: str = "bf16"
    attention: str = "flash"  # one of ATTENTION
    overlap_transfers: bool = True
    coefficients: Coefficients = field(default_factory=Coefficients)
    ep: bool = False
    dp_attention: bool = False
    expert_dtype: str = ""  # "": as weight_dtype
    speculation: Speculation | None = None  # MTP / EAGLE: decode steps priced per token emitted (step_cost)
    # derived once (the simulator prices a million steps a report)
    weight_bytes: float = field(init=False, repr=False, compare=False)  # stored across the replica
    groups: tuple[GroupCost, ...] = field(init=False, repr=False, compare=False)
    decode_table: DecodeTable = field(init=False, repr=False, compare=False)  # every group's decodes at once
    write_bytes_per_token: float = field(init=False, repr=False, compare=False)
    flops: float = field(init=False, repr=False, compare=False)  # dense peak of the replica at the weights' rate
    expert_flops: float = field(init=False, repr=False, compare=False)  # the same at the experts' rate
    kernel: tuple[float, float] = field(init=False, repr=False, compare=False)  # Coefficients.attention_kernel
    layer_floors_s: float = field(init=False, repr=False, compare=False)  # every layer's floor, a step
    by_tokens: dict[int, tuple[float, float]] = field(init=False, repr=False, compare=False)  # see token_seconds
    by_chunk: dict[tuple[int, int], Work] = field(init=False, repr=False, compare=False)  # see chunk_work

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION)}, got {self.attention!r}")
        for name in (self.weight_dtype, self.expert_dtype or self.weight_dtype):
            if name not in WEIGHTS:
                raise ValueError(f"weight dtype must be one of {', '.join(WEIGHTS)}, got {name!r}")
        if self.tp < 1:
            raise ValueError("tp must be >= 1")
        if (self.ep or self.dp_attention) and not self.model.routed_params:
            raise ValueError(f"ep / dp_attention need a MoE model with its experts stated; {self.model.name} has none")
        if self.dp_attention and not self.ep:
            raise ValueError("dp_attention runs beside expert parallelism: set ep too")
        if self.speculation and self.speculation.draft_layers > self.model.layers:
            raise ValueError(f"draft_layers={self.speculation.draft_layers} exceeds {self.model.name}'s "
                             f"{self.model.layers} layers")
        m = self.model
        dense_copies = self.tp if self.dp_attention else 1
        draft = self.speculation.draft_layers / m.layers if self.speculation else 0.0  # its layers, stored beside
        object.__setattr__(self, "weight_bytes", (m.dense_params * self.dense_bytes * dense_copies
                                                  + m.routed_params * self.expert_bytes) * (1.0 + draft))
        object.__setattr__(self, "groups", group_costs(m, self.kv_codec, BLOCK_SIZE, self.kv_ranks))
        object.__setattr__(self, "decode_table", DecodeTable(self.groups))
        object.__setattr__(self, "write_bytes_per_token", write_bytes_per_token(self.groups))
        object.__setattr__(self, "flops", self.tp * self.hardware_rate(self.weight_dtype))
        object.__setattr__(self, "expert_flops", self.tp * self.hardware_rate(self.expert_dtype or self.weight_dtype))
        object.__setattr__(self, "kernel", self.coefficients.attention_kernel(self.attention))
        linear = sum(g.layers for g in m.groups if g.kind == "linear")
        object.__setattr__(self, "layer_floors_s", m.layers * self.coefficients.layer_floor_s
                           + linear * self.coefficients.linear_layer_floor_s)
        object.__setattr__(self, "by_tokens", {})
        object.__setattr__(self, "by_chunk", {})

    def hardware_rate(self, dtype: str) -> float:
        """Dense peak FLOP/s of one device for GEMMs on weights of `dtype`: FP4 on FP4 tensor cores where the
        hardware has them, else dequantized to bf16 (weight-only kernels, as gpt-oss MXFP4 runs on Hopper)."""
        rate, hw = WEIGHTS[dtype][1], self.hardware
        if rate == "fp4":
            return hw.fp4_flops or hw.bf16_flops
        return hw.fp8_flops if rate == "fp8" else hw.bf16_flops

    @property
    def dense_bytes(self) -> float:
        return WEIGHTS[self.weight_dtype][0]

    @property
    def expert_bytes(self) -> float:
        return WEIGHTS[self.expert_dtype or self.weight_dtype][0]

    @property
    def kv_ranks(self) -> int:
        """Copies of a sequence's shared KV vectors: every TP rank keeps one (of MLA's latent, a compressed K=V);
        under DP attention a sequence lives on one rank."""
        return 1 if self.dp_attention else self.tp

    @property
    def mode(self) -> str:
        return mode_name(self.tp, self.ep, self.dp_attention)

    def kv_bytes(self, context: int) -> float:
        """One sequence's KV at `context` tokens on this replica (every layer by its kind, TP replicas included)."""
        return kv_bytes(self.model, self.kv_codec, context, self.kv_ranks)

    @property
    def kv_capacity_bytes(self) -> float:
        """HBM left for KV across the tp devices: what the engine takes, less weights and activations."""
        c, hw = self.coefficients, self.hardware
        return self.tp * (hw.hbm_bytes * c.memory_utilization - c.activation_reserve_bytes) - self.weight_bytes


@dataclass(slots=True, frozen=True)
class StepShape:
    """What the step-cost model needs of a batch: prefill chunks as (new tokens, tokens before them) and, per
    decode, the context it attends over (a tuple or a numpy array: priced without a loop over sequences).
    `decode_queries`: tokens each decode runs through the model (a speculative verification: the drafted ones
    and the bonus token, over one read of its KV)."""

    prefills: Sequence[tuple[int, int]] = ()
    decodes: Sequence[int] | np.ndarray = ()
    decode_queries: int = 1

    @property
    def tokens(self) -> int:
        return sum(n for n, _ in self.prefills) + self.decode_queries * len(self.decodes)


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
    """The step's attention work for its prefill chunks (one by one, remembered: `chunk_work`) and for its decodes
    (one vectorised call for every group: `attention.DecodeTable`, contexts as an array where a group bounds them)."""
    decodes, table, k = shape.decodes, d.decode_table, len(shape.decodes)
    pre, dec = Work(), Work()
    for n, start in shape.prefills:
        pre.add(chunk_work(n, start, d.groups, d.coefficients.query_tile, d.by_chunk))
    if k:
        total = float(decodes.sum() if isinstance(decodes, np.ndarray) else sum(decodes))
        contexts = np.asarray(decodes, dtype=float) if table.needs_contexts else None
        dec = table.work(contexts, k, total, shape.decode_queries)
    return pre, dec


def weight_seconds(tokens: int, d: Deployment) -> float:
    """GEMMs over the step's tokens. The always-active weights: every token, read once per step (by every device
    where DP attention replicates them). The routed experts: grouped GEMMs at the efficiency their tokens per
    expert allow, reading only the experts the step's tokens touch; the busiest EP rank sets the pace."""
    c, m, hw = d.coefficients, d.model, d.hardware
    hbm = d.tp * hw.hbm_bw * c.hbm_efficiency
    dense = m.dense_params
    read = dense * d.dense_bytes * (d.tp if d.dp_attention else 1)
    t_dense = max(2.0 * dense * tokens / (d.flops * c.gemm_efficiency), read / hbm)
    if not m.routed_params:  # dense, or MoE with experts unstated: active params as one GEMM, touched bytes
        return t_dense
    k, e = m.experts_per_token, m.experts
    touched = 1.0 - (1.0 - k / e) ** tokens  # expected fraction of experts the step's tokens reach
    rows = tokens * k / e / touched  # tokens per expert the step reaches: the grouped GEMMs' M
    imbalance = c.expert_imbalance if d.ep and d.tp > 1 else 1.0
    compute = 2.0 * m.routed_params * k / e * tokens * imbalance / (d.expert_flops * c.moe_efficiency_at(rows))
    return t_dense + max(compute, m.routed_params * d.expert_bytes * touched / hbm, m.layers * c.moe_layer_floor_s)


def communication_seconds(tokens: int, d: Deployment) -> float:
    """Collectives per layer. Under TP attention (with or without EP) two all-reduces of the hidden state: after
    attention, and after the MLP, whose experts each rank computes for the tokens it already holds (SGLang's and
    vLLM's EP without DeepEP: no dispatch needed). Under DP attention + EP each rank holds only its own tokens:
    dispatch (fp8) and combine (bf16) of each token's k expert copies, all-to-all. Over NVLink inside the
    scale-up domain, over the NIC (RDMA) beyond it."""
    if d.tp == 1:
        return 0.0
    c, m, hw = d.coefficients, d.model, d.hardware
    bw = (hw.interconnect_bw if d.tp <= hw.scale_up_gpus else hw.network_bw) * c.interconnect_efficiency
    share = (d.tp - 1) / d.tp
    if not d.dp_attention:
        all_reduce = 2.0 * share * tokens * m.hidden * 2.0  # bytes per device per all-reduce (ring)
        return m.layers * 2 * (all_reduce / bw + c.collective_latency_s)
    a2a = share * tokens * m.experts_per_token * m.hidden * (1.0 + 2.0) / d.tp  # per device: dispatch + combine
    return m.layers * (a2a / bw + 2 * c.collective_latency_s)


def token_seconds(tokens: int, d: Deployment) -> tuple[float, float]:
    """(weights, communication) seconds of a `tokens`-token step, remembered: a run has few distinct counts."""
    if tokens not in d.by_tokens:
        d.by_tokens[tokens] = (weight_seconds(tokens, d), communication_seconds(tokens, d))
    return d.by_tokens[tokens]


def step_cost(shape: StepShape, d: Deployment) -> StepCost:
    """Seconds a step takes, by term; speculating with decodes in the step: per token emitted (`speculative_cost`)."""
    if d.speculation is not None and len(shape.decodes):
        return speculative_cost(shape, d, d.speculation)
    return _plain_cost(shape, d)


def speculative_cost(shape: StepShape, d: Deployment, spec: Speculation) -> StepCost:
    """A speculative step per token it emits, term by term: the step's prefill chunks whole, plus what its
    decodes add (a verification of `draft_tokens` + 1 tokens a sequence, and the draft's forward passes: its
    layers' share of a decode step's work and their kernel floors, its step overhead riding on the
    verification's) over the `acceptance_length` tokens a verification emits. The simulator advances a decode by
    one token a step, so a decode-only stretch costs what the engine spends on it in expectation; a mixed step
    carries its chunk beside a 1/acceptance share of a verification (the chunks' and the decodes' work is the
    same, the interleaving finer, the weights read once per simulated step: conservative)."""
    base = _plain_cost(StepShape(prefills=shape.prefills), d)
    verify = _plain_cost(replace(shape, decode_queries=spec.verify_queries), d)
    one = _plain_cost(StepShape(decodes=shape.decodes), d)
    share = spec.draft_share(d.model.layers)
    draft = StepCost(one.weights * share, one.attention * share, one.kv_write * share, one.communication * share,
                     spec.draft_tokens * spec.draft_layers * d.coefficients.layer_floor_s)
    a = spec.acceptance_length
    return StepCost(*(getattr(base, f.name) + (getattr(verify, f.name) + getattr(draft, f.name)
                                               - getattr(base, f.name)) / a for f in fields(StepCost)))


def _plain_cost(shape: StepShape, d: Deployment) -> StepCost:
    c = d.coefficients
    tokens = shape.tokens
    if tokens == 0:
        return StepCost()
    hbm = d.tp * d.hardware.hbm_bw * c.hbm_efficiency
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
    kv_write = tokens * d.write_bytes_per_token / hbm
    sequences = len(shape.prefills) + len(shape.decodes)
    per_rank = sequences / d.tp if d.dp_attention else sequences  # DP ranks schedule their own sequences
    overhead = c.step_overhead_s + d.layer_floors_s + c.sequences(per_rank)
    weights, communication = token_seconds(tokens, d)
    return StepCost(weights, attention_time(both), kv_write, communication, overhead)  # for whom: pricing.attribute


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
