"""Published measurements the step-cost model is held against, each with its source and date.

Each entry says what was measured and computes agentkv's modelled figure for the same workload on the catalog's
hardware and model, so `python -m bench.calibration` and the unit tests read one table. The coefficients these fix
(`Coefficients.seq_overhead_s`, `collective_latency_s`, `host_load_latency_s`, the attention kernels' efficiency
by context) name the entry they come from. Every source was re-read on 2026-12-03 from stored copies; a page that
shows no date says so in `as_of`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agentkv.catalog import hardware, model
from agentkv.kvcache.sizing import codec, kv_bytes_per_token
from agentkv.sim.stepcost import (
    Deployment,
    StepShape,
    attention_work,
    decode_seconds,
    prefill_seconds,
    step_cost,
    transfer_seconds,
)


@dataclass(slots=True, frozen=True)
class Measurement:
    workload: str
    unit: str
    published: float
    source: str
    as_of: str  # the source's date, or "undated" and the day it was read
    modelled: Callable[[], float]
    split: str = "fit"  # "fit": coefficients are fitted on it; "validation": held back (see SPLIT); "review":
    # the reviewer check, public measurements beyond the issue's, never fitted
    moe: bool = False  # measured on a mixture-of-experts model
    out_of_band: str = ""  # a review row outside 0.8-1.25: why, as far as the sources tell

    @property
    def ratio(self) -> float:
        """published / modelled: 1 is a perfect model, > 1 an optimistic one."""
        return self.published / self.modelled()


def _dep(hw: str, m: str, tp: int = 1, weights: str = "bf16", attention: str = "flash", ep: bool = False,
         dp_attention: bool = False) -> Deployment:
    return Deployment(hardware(hw), model(m), codec("bf16"), tp=tp, weight_dtype=weights, attention=attention,
                      ep=ep, dp_attention=dp_attention)


def end_to_end_ms(d: Deployment, batch: int, prompt: int, output: int) -> float:
    """A batch arriving together: its prompts prefilled in one chunk, then `output` decode steps."""
    pre = step_cost(StepShape(prefills=((prompt, 0),) * batch), d).total  # one step holds the batch's prompts
    dec = sum(decode_seconds(batch, prompt + k, d) for k in range(1, output))
    return 1e3 * (pre + dec)


def steady_output_tokens_per_s(d: Deployment, concurrency: int, prompt: int, output: int, mixed: bool = True) -> float:
    """A closed loop keeping `concurrency` requests in flight, all at mean contexts: every step decodes each of
    them, and concurrency x prompt tokens are prefilled per `output` steps. `mixed` (vLLM's chunked prefill):
    each step carries its share of those prompt tokens; otherwise (SGLang's default) prompts run as prefill
    batches of their own between decode steps."""
    ctx = prompt + output // 2
    if not mixed:
        step = decode_seconds(concurrency, ctx, d) + concurrency / output * prefill_seconds(prompt, d, 8192)
        return concurrency / step
    prefill = (concurrency * prompt // output, prompt // 2)  # prompt tokens per step, at the mean position
    shape = StepShape(prefills=(prefill,), decodes=(ctx,) * concurrency)
    return concurrency / step_cost(shape, d).total


def steady_tpot_ms(d: Deployment, concurrency: int, prompt: int, output: int, mixed: bool = True) -> float:
    """Mean time per output token of the closed loop above: its step time."""
    return 1e3 * concurrency / steady_output_tokens_per_s(d, concurrency, prompt, output, mixed)


def decode_tpot_ms(d: Deployment, batch: int, prompt: int, output: int) -> float:
    """A disaggregated decode pool's step (no prefills), `batch` sequences per replica at their mean context."""
    return 1e3 * decode_seconds(batch, prompt + output // 2, d)


def steady_ttft_ms(d: Deployment, concurrency: int, prompt: int, output: int) -> float:
    """A request's prompt prefilled in one step beside the other requests' decodes (the closed loop keeps them
    staggered), then its first token."""
    others = (prompt + output // 2,) * (concurrency - 1)
    return 1e3 * (step_cost(StepShape(prefills=((prompt, 0),), decodes=others), d).total
                  + decode_seconds(concurrency, prompt + 1, d))


def extra_prompt_ms(d: Deployment, concurrency: int, short: int, long: int, output: int) -> float:
    """TTFT at a long prompt less TTFT at a short one: what the longer prompt's prefill costs. Published TTFTs
    also carry the serving front end's per-request latency (HTTP, tokenizer, scheduler hand-off: ~150-200 ms on
    InferenceMAX's runs whatever the prompt), which no step prices; the difference cancels it."""
    return steady_ttft_ms(d, concurrency, long, output) - steady_ttft_ms(d, concurrency, short, output)


def reload_speedup(d: Deployment, prompt: int) -> float:
    """Recompute of a prompt over its reload from host DRAM."""
    return prefill_seconds(prompt, d, 8192) / transfer_seconds({"host": prompt * kv_bytes_per_token(d.model, d.kv_codec)}, d)


def kernel_tflops(d: Deployment, seqlen: int, tokens: int = 16384) -> float:
    """Attention FLOP/s of a causal forward pass over sequences of `seqlen`, batched to `tokens` in all (the
    FlashAttention papers' setting): the step's attention FLOPs over its modelled attention time."""
    shape = StepShape(prefills=((seqlen, 0),) * (tokens // seqlen))
    return attention_work(shape, d)[0].flops / step_cost(shape, d).attention / 1e12


_CI = "vLLM CI performance benchmark, latency tests (mean end-to-end latency), buildkite.com/vllm/performance-benchmark"
_NIM = ("NVIDIA NIM LLMs Benchmarking, Performance (docs.nvidia.com/nim/benchmarking/llm/1.0.0/performance), "
        "Llama-3.3-70b-instruct, NIM 1.8.0, 2x H100 80G fp8 TP2, 5000 in / 500 out")
_FA3 = ("FlashAttention-3 paper (Shah et al., arXiv 2407.08608v2), Fig. 5d: forward, causal mask, head dim 128, "
        "H100 SXM5, batch x seqlen = 16k; modelled on Llama-3.1-8B's heads (128-dim, GQA 8)")
_MINF = ("MInference repo, experiments/README.md end-to-end table (github.com/microsoft/MInference, added in "
         "commit e3569ed): LLaMA-3-8B-Instruct-1M (Llama-3-8B shapes, modelled as Llama-3.1-8B), one A100 80GB, "
         "HF transformers prefill without KV cache, 'FlashAttention-2' column (its attention was SDPA by default, "
         "issue #84); the paper's 300K figure is '3 minutes' per its "
         "erratum (issue #84, maintainer reply 2024-11-18; the arXiv intro says 6). On an A100 the IO-aware kernel "
         "is FA2 itself, modelled as 'flash': the FA2 paper (arXiv 2307.08691, Fig. 5d) puts it at 197-200 of 312 "
         "TFLOP/s at 8-16k, the fraction FA3 reaches on H100")

_MINF_VLLM = ("MInference repo, experiments/README.md, 'vLLM latency data, for reference, on an A100' (commit "
              "ddfb462): LLaMA-3-8B-Instruct-1M in vLLM, max_num_seqs 1, eager; the chunk size, unset there, moves "
              "the modelled figure < 1% (512 to whole prompt); 'flash' on an A100 as in the 300K row")

MEASUREMENTS = (
    Measurement("Llama-3.1-8B, H200 TP1, batch 8, 32 in / 128 out, end to end", "ms", 833.421,
                f"{_CI}/builds/9515: latency_llama8B_tp1 H200", "undated build page; read 2026-12-03",
                lambda: end_to_end_ms(_dep("h200", "llama-3.1-8b"), 8, 32, 128)),
    Measurement("Llama-3-70B (as Llama-3.1-70B), H200 TP4, batch 8, 32 in / 128 out, end to end", "ms", 2077.53,
                f"{_CI}/builds/9515: latency_llama70B_tp4 H200", "undated build page; read 2026-12-03",
                lambda: end_to_end_ms(_dep("h200", "llama-3.1-70b", tp=4), 8, 32, 128)),
    Measurement("Llama-3.1-8B, A100 80GB TP1, batch 8, 32 in / 128 out, end to end", "ms", 1579.27,
                f"{_CI}/builds/9523: latency_llama8B_tp1 A100-SXM4-80GB", "undated build page; read 2026-12-03",
                lambda: end_to_end_ms(_dep("a100", "llama-3.1-8b"), 8, 32, 128)),
    Measurement("Llama-3-70B (as Llama-3.1-70B), A100 80GB TP4, batch 8, 32 in / 128 out, end to end", "ms",
                3990.59, f"{_CI}/builds/9523: latency_llama70B_tp4 A100-SXM4-80GB",
                "undated build page; read 2026-12-03",
                lambda: end_to_end_ms(_dep("a100", "llama-3.1-70b", tp=4), 8, 32, 128)),
    Measurement("Llama-3.3-70B fp8 (as 3.1-70B), 2x H100 TP2, 5000 in, c=1: TTFT", "ms", 406.77, _NIM,
                "undated page; read 2026-12-03",
                lambda: 1e3 * (prefill_seconds(5000, _dep("h100-sxm", "llama-3.1-70b", 2, "fp8"), 8192)
                               + decode_seconds(1, 5001, _dep("h100-sxm", "llama-3.1-70b", 2, "fp8")))),
    Measurement("Llama-3.3-70B fp8 (as 3.1-70B), 2x H100 TP2, 5000 in / 500 out, c=1: ITL", "ms", 18.58, _NIM,
                "undated page; read 2026-12-03",
                lambda: 1e3 * decode_seconds(1, 5250, _dep("h100-sxm", "llama-3.1-70b", 2, "fp8"))),
    Measurement("Llama-3.3-70B fp8 (as 3.1-70B), 2x H100 TP2, 5000 in / 500 out, c=25: output throughput",
                "tok/s", 623.4, _NIM, "undated page; read 2026-12-03",
                lambda: steady_output_tokens_per_s(_dep("h100-sxm", "llama-3.1-70b", 2, "fp8"), 25, 5000, 500)),
    Measurement("Llama-3.3-70B fp8 (as 3.1-70B), 2x H100 TP2, 5000 in / 500 out, c=50: output throughput",
                "tok/s", 814.37, _NIM, "undated page; read 2026-12-03",
                lambda: steady_output_tokens_per_s(_dep("h100-sxm", "llama-3.1-70b", 2, "fp8"), 50, 5000, 500)),
    Measurement("DRAM reload vs recompute, Llama-3.1-8B, H100, 512-token prompt", "x", 2.0,
                "vLLM blog 'Inside vLLM's New Offloading Connector' (blog.vllm.ai, Ozeri and Harnik, IBM): CPU "
                "loads cut single-request TTFT 2-22x by prompt size; 'TTFT for this prompt size [512] only "
                "decreased by X2' (the 22x end's prompt size is only in a figure)", "2025-12-29",
                lambda: reload_speedup(_dep("h100-sxm", "llama-3.1-8b"), 512)),
    Measurement("Llama-3-8B (as 3.1-8B) prefill of 100K tokens in vLLM, one A100 80GB, FlashAttention-2", "s",
                21.73, _MINF_VLLM, "2024-07-18", lambda: prefill_seconds(100_000, _dep("a100", "llama-3.1-8b"), 8192)),
    Measurement("Llama-3-8B (as 3.1-8B) prefill of 128K tokens in vLLM, one A100 80GB, FlashAttention-2", "s",
                32.86, _MINF_VLLM, "2024-07-18", lambda: prefill_seconds(128_000, _dep("a100", "llama-3.1-8b"), 8192)),
    Measurement("Llama-3-8B (as 3.1-8B) prefill of 300K tokens, one A100 80GB, FlashAttention-2", "s", 169.62,
                _MINF, "2024-06-07", lambda: prefill_seconds(300_000, _dep("a100", "llama-3.1-8b"), 300_000)),
    Measurement("FlashAttention-3 forward, causal, head dim 128, H100, 512 tokens", "TF/s", 292.0, _FA3,
                "2024-07-12", lambda: kernel_tflops(_dep("h100-sxm", "llama-3.1-8b"), 512)),
    Measurement("FlashAttention-3 forward, causal, head dim 128, H100, 2k tokens", "TF/s", 521.0, _FA3,
                "2024-07-12", lambda: kernel_tflops(_dep("h100-sxm", "llama-3.1-8b"), 2048)),
    Measurement("FlashAttention-3 forward, causal, head dim 128, H100, 16k tokens", "TF/s", 616.0, _FA3,
                "2024-07-12", lambda: kernel_tflops(_dep("h100-sxm", "llama-3.1-8b"), 16384)),
    Measurement("FlashAttention-2 forward, causal, head dim 128, H100, 512 tokens", "TF/s", 191.0, _FA3,
                "2024-07-12", lambda: kernel_tflops(_dep("h100-sxm", "llama-3.1-8b", attention="flash2"), 512)),
    Measurement("FlashAttention-2 forward, causal, head dim 128, H100, 16k tokens", "TF/s", 335.0, _FA3,
                "2024-07-12", lambda: kernel_tflops(_dep("h100-sxm", "llama-3.1-8b", attention="flash2"), 16384)),
)

# ---- SemiAnalysis InferenceMAX: MoE serving on 2026 hardware and engines. DeepSeek-R1 has DeepSeek-V3's shapes
# (modelled as 'deepseek-v3'); "mean TPOT" is (end-to-end - TTFT) / (output - 1), per request, averaged.
SPLIT = ("by hardware: FIT on the dense rows, DeepSeek-R1 on NVIDIA B200, H200 and AMD MI355X and Qwen3-Coder-Next's "
         "batch-1 decode on H200; VALIDATION (held back, no coefficient fitted on them) on Blackwell Ultra, NVIDIA "
         "GB300 (NVL72) and B300, which the fit never saw; REVIEW: the reviewer check, Qwen3-Next rows from sources "
         "beyond the issue's, never fitted, each out-of-band row saying why")
_IX = ("SemiAnalysis InferenceMAX dashboard API snapshot: github.com/SemiAnalysisAI/InferenceX-app "
       "packages/app/cypress/fixtures/api/benchmarks.json (stored copy at commit 3a600f1d, read 2026-12-05)")


def _ix(workload: str, published: float, run: str, date: str, modelled: Callable[[], float],
        split: str = "fit", unit: str = "ms") -> Measurement:
    return Measurement(f"DeepSeek-R1 {workload}", unit, published,
                       f"{_IX}; run github.com/SemiAnalysisAI/InferenceX/actions/runs/{run}", date, modelled, split,
                       moe=True)


_B200_EP4 = _dep("b200", "deepseek-v3", 4, "fp4", ep=True)  # SGLang v0.5.9, TP4 + EP4, NVFP4 checkpoint
_H200_DEP8 = _dep("h200", "deepseek-v3", 8, "fp8", ep=True, dp_attention=True)  # Dynamo + TensorRT-LLM decode
_B200_DEP8 = _dep("b200", "deepseek-v3", 8, "fp4", ep=True, dp_attention=True)
_B200_EP8 = _dep("b200", "deepseek-v3", 8, "fp4", ep=True)
_MI355_TP4 = _dep("mi355x", "deepseek-v3", 4, "mxfp4")  # SGLang v0.5.9 ROCm, TP4, MXFP4 checkpoint
_MI355_EP8 = _dep("mi355x", "deepseek-v3", 8, "fp8", ep=True)  # SGLang + MoRI disaggregated decode, TP8 + EP8
_GB300_TP4 = _dep("gb300", "deepseek-v3", 4, "fp8")  # Dynamo + SGLang disaggregated decode, TP4
_GB300_DEP24 = _dep("gb300", "deepseek-v3", 24, "fp8", ep=True, dp_attention=True)  # one NVLink domain
_B300_DEP8 = _dep("b300", "deepseek-v3", 8, "fp4", ep=True, dp_attention=True)  # Dynamo + TensorRT-LLM decode

_R1 = "23552373331/attempts/2"
_MI = "22469096331/attempts/1"
_MORI = "21741051722/attempts/1"
INFERENCEMAX = (
    *(_ix(f"NVFP4, 4x B200 TP4+EP4, SGLang, {i // 1024}k/{o // 1024}k, c={c}: mean TPOT", tpot, _R1, "2026-03-25",
          lambda c=c, i=i, o=o: steady_tpot_ms(_B200_EP4, c, i, o, mixed=False))
      for c, i, o, tpot in ((4, 1024, 1024, 9.001), (4, 1024, 8192, 8.734), (4, 8192, 1024, 9.152),
                            (8, 1024, 1024, 10.42), (8, 1024, 8192, 10.74), (8, 8192, 1024, 11.62),
                            (16, 1024, 1024, 12.91), (16, 1024, 8192, 12.75))),
    *(_ix(f"NVFP4, 4x B200 TP4+EP4, SGLang, c={c}: mean TTFT at 8k/1k less at 1k/1k (7k more prompt tokens)",
          ttft8 - ttft1, _R1, "2026-03-25", lambda c=c: extra_prompt_ms(_B200_EP4, c, 1024, 8192, 1024))
      for c, ttft1, ttft8 in ((4, 208.4, 317.1),)),  # at c=8 prompts also queue behind each other's prefill
    _ix("FP8, H200 DP-attention+EP8 decode (Dynamo, TRT-LLM; 1536 over 6 decode replicas), 1k/1k: mean TPOT", 39.90,
        "23438524239/attempts/5", "2026-03-23", lambda: decode_tpot_ms(_H200_DEP8, 256, 1024, 1024)),
    _ix("FP8, H200 DP-attention+EP8 decode (Dynamo, TRT-LLM; 3584 over 7 decode replicas), 1k/1k: mean TPOT", 48.59,
        "23438524239/attempts/5", "2026-03-23", lambda: decode_tpot_ms(_H200_DEP8, 512, 1024, 1024)),
    _ix("FP8, H200 DP-attention+EP8 decode (Dynamo, TRT-LLM; 512 on 1 decode replica), 8k/1k: mean TPOT", 58.28,
        "22013103756/attempts/1", "2026-02-14", lambda: decode_tpot_ms(_H200_DEP8, 512, 8192, 1024)),
    _ix("NVFP4, B200 DP-attention+EP8 decode (Dynamo, TRT-LLM; 837 over 3 decode replicas), 8k/1k: mean TPOT",
        21.07, "21484975323/attempts/1", "2026-01-29", lambda: decode_tpot_ms(_B200_DEP8, 279, 8192, 1024)),
    _ix("NVFP4, B200 TP8+EP8 decode (Dynamo, TRT-LLM; 450 over 6 decode replicas), 1k/1k: mean TPOT", 13.84,
        "21484975323/attempts/1", "2026-01-29", lambda: decode_tpot_ms(_B200_EP8, 75, 1024, 1024)),
    *(_ix(f"MXFP4, 4x MI355X TP4, SGLang, 1k/1k, c={c}: mean TPOT", tpot, _MI, "2026-02-27",
          lambda c=c: steady_tpot_ms(_MI355_TP4, c, 1024, 1024, mixed=False))
      for c, tpot in ((4, 10.64), (8, 12.31), (16, 15.08), (32, 19.50), (64, 26.25))),
    *(_ix(f"FP8, MI355X TP8+EP8 decode (SGLang + MoRI; {c} over 2 decode replicas), {i // 1024}k/{o // 1024}k: "
          "mean TPOT", tpot, _MORI, "2026-02-06",
          lambda c=c, i=i, o=o: decode_tpot_ms(_MI355_EP8, c // 2, i, o))
      for c, i, o, tpot in ((32, 1024, 1024, 16.36), (32, 1024, 8192, 17.47), (64, 1024, 1024, 18.19),
                            (64, 1024, 8192, 20.29), (128, 1024, 1024, 21.62), (128, 1024, 8192, 25.80))),
    *(_ix(f"FP8, MI355X TP8+EP8 decode (SGLang + MoRI; {c} over 2 decode replicas), 8k/1k: mean TPOT", tpot,
          "21924339253/attempts/1", "2026-02-11",
          lambda c=c: decode_tpot_ms(_MI355_EP8, c // 2, 8192, 1024))
      for c, tpot in ((32, 14.53), (64, 18.54))),
    # validation: Blackwell Ultra, which the fit never saw
    *(_ix(f"FP8, GB300 TP4 decode (Dynamo + SGLang; 1 decode replica), 8k/1k, c={c}: mean TPOT", tpot,
          "21831958748/attempts/2", "2026-02-09", lambda c=c: decode_tpot_ms(_GB300_TP4, c, 8192, 1024),
          "validation")
      for c, tpot in ((4, 10.10), (8, 12.62))),
    *(_ix(f"FP8, GB300 TP4 decode (Dynamo + SGLang; {c} over 4 decode replicas), 1k/1k: mean TPOT", tpot,
          "21831958748/attempts/2", "2026-02-09", lambda c=c: decode_tpot_ms(_GB300_TP4, c // 4, 1024, 1024),
          "validation")
      for c, tpot in ((4, 7.733), (8, 8.494), (16, 9.808), (32, 12.39))),
    *(_ix(f"FP8, GB300 NVL72 DP-attention+EP24 decode (Dynamo + SGLang; {c} on 24 GPUs), 8k/1k: mean TPOT", tpot,
          "21831958748/attempts/2", "2026-02-09", lambda c=c: decode_tpot_ms(_GB300_DEP24, c, 8192, 1024),
          "validation")
      for c, tpot in ((2048, 27.38), (4096, 30.08))),
    _ix("NVFP4, B300 DP-attention+EP8 decode (Dynamo, TRT-LLM; 4611 over 2 decode replicas), 1k/1k: mean TPOT", 29.64,
        "21446488308/attempts/1", "2026-01-28", lambda: decode_tpot_ms(_B300_DEP8, 2306, 1024, 1024), "validation"),
)
MEASUREMENTS = MEASUREMENTS + INFERENCEMAX

# ---- The reviewer check: public MoE / long-context serving measurements beyond the issue's, on Qwen3-Next shapes
# (48 layers: 36 Gated DeltaNet + 12 gated attention, 512 experts, 10 active). The batch-1 1k row fits
# `Coefficients.linear_layer_floor_s`; the others are never fitted and stay in the table wherever they fall.
_MILLSTONE = ("Millstone AI inference benchmark 'Qwen3-Coder-Next FP8 on 1x H200 SXM' "
              "(millstoneai.com/inference-benchmark/qwen3-coder-next-fp8-1x-h200-sxm): 1K-256K contexts, 1024 "
              "output tokens, no prompt caching, no speculative decoding; the engine is not in the stored copy, "
              "modelled as vLLM (chunked prefill, 8192-token chunks)")
_SGL_CODER = ("SGLang PR #18195 (github.com/sgl-project/sglang/pull/18195), Qwen3-Coder-Next-FP8 on 2x H100 TP2 after "
              "its tuned MoE config: bench_serving random 1024/1024 (lengths uniform up to 1024: 50,561 input tokens "
              "over 100 prompts), max concurrency 8")
_SGL_NEXT = ("SGLang PR #10404 (github.com/sgl-project/sglang/pull/10404), Qwen3-Next-80B-A3B on H200 after its tuned "
             "MoE configs (named without a dtype: bf16 weights), bench_serving random 1000/2000, range ratio 1, max "
             "concurrency 8")
_MILLSTONE_DATE = "2026-02-09"
_QNEXT_H200 = _dep("h200", "qwen3-next-80b-a3b", 1, "fp8")
_TP_PESSIMISTIC = ("the model is pessimistic at TP2-4 with 8 sequences on this 48-layer model: 96 all-reduces a step at "
                   "the 36 us latency fitted on NIM TP2 and DeepSeek TP8 rows are 3.5 ms of its ~12 ms, and the "
                   "DeltaNet floor fitted at batch 1 adds 1.5 ms. A 15 us latency brings them to 0.99-1.19 but "
                   "takes 13 FIT rows (DeepSeek-R1 on B200 TP4 + EP4 and MI355X) out of band: one collective latency "
                   "for every engine and model shape does not hold, and none is fitted per engine here")


def _qnext(workload: str, unit: str, published: float, source: str, date: str, modelled: Callable[[], float],
           split: str = "review", out_of_band: str = "") -> Measurement:
    return Measurement(workload, unit, published, source, date, modelled, split, moe=True, out_of_band=out_of_band)


REVIEW = (
    _qnext("Qwen3-Coder-Next FP8 (Qwen3-Next shapes), 1x H200, 1k context, 1 request: decode speed", "tok/s", 210.8,
           _MILLSTONE, _MILLSTONE_DATE, lambda: 1 / decode_seconds(1, 1024 + 512, _QNEXT_H200), split="fit"),
    _qnext("Qwen3-Coder-Next FP8, 1x H200, 256k context, 1 request: decode speed", "tok/s", 152.8, _MILLSTONE,
           _MILLSTONE_DATE, lambda: 1 / decode_seconds(1, 261_120 + 512, _QNEXT_H200)),
    _qnext("Qwen3-Coder-Next FP8, 1x H200, 1k/1k, 10 concurrent: system output throughput", "tok/s", 852.6,
           _MILLSTONE, _MILLSTONE_DATE, lambda: steady_output_tokens_per_s(_QNEXT_H200, 10, 1024, 1024)),
    _qnext("Qwen3-Coder-Next FP8, 1x H200, 1 request: TTFT at 256k less at 1k", "s", 20.4 - 0.379, _MILLSTONE,
           _MILLSTONE_DATE,
           lambda: (prefill_seconds(261_120, _QNEXT_H200, 8192) + decode_seconds(1, 261_121, _QNEXT_H200)
                    - prefill_seconds(1024, _QNEXT_H200, 8192) - decode_seconds(1, 1025, _QNEXT_H200)),
           out_of_band="long-prompt prefill: 10.3 s of the modelled 12.6 s is the 12 gated-attention layers (head dim "
                       "256) over 256k keys at FlashAttention-3's head-dim-128 efficiency; at FlashAttention-2's it "
                       "would be 21.6 s (0.93). The run's attention kernel and chunk size are not published (2048-token "
                       "chunks: 15.3 s), so no term is fitted on it"),
    _qnext("Qwen3-Coder-Next FP8, 2x H100 TP2, SGLang, ~0.5k/0.5k, c=8: median ITL", "ms", 8.25, _SGL_CODER,
           "2026-02-03", lambda: 1e3 * decode_seconds(8, 506 + 256, _dep("h100-sxm", "qwen3-next-80b-a3b", 2, "fp8")),
           out_of_band=_TP_PESSIMISTIC),
    *(_qnext(f"Qwen3-Next-80B-A3B bf16, H200 TP{tp}, SGLang, 1000/2000, c=8: output throughput", "tok/s", tps,
             _SGL_NEXT, "2025-09-13",
             lambda tp=tp: steady_output_tokens_per_s(_dep("h200", "qwen3-next-80b-a3b", tp), 8, 1000, 2000,
                                                      mixed=False), out_of_band=_TP_PESSIMISTIC)
      for tp, tps in ((2, 937.94), (4, 1137.94))),
)
MEASUREMENTS = MEASUREMENTS + REVIEW
