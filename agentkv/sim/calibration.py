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

    @property
    def ratio(self) -> float:
        """published / modelled: 1 is a perfect model, > 1 an optimistic one."""
        return self.published / self.modelled()


def _dep(hw: str, m: str, tp: int = 1, weights: str = "bf16", attention: str = "flash") -> Deployment:
    return Deployment(hardware(hw), model(m), codec("bf16"), tp=tp, weight_dtype=weights, attention=attention)


def end_to_end_ms(d: Deployment, batch: int, prompt: int, output: int) -> float:
    """A batch arriving together: its prompts prefilled in one chunk, then `output` decode steps."""
    pre = step_cost(StepShape(prefills=((prompt, 0),) * batch), d).total  # one step holds the batch's prompts
    dec = sum(decode_seconds(batch, prompt + k, d) for k in range(1, output))
    return 1e3 * (pre + dec)


def steady_output_tokens_per_s(d: Deployment, concurrency: int, prompt: int, output: int) -> float:
    """A closed loop keeping `concurrency` requests in flight with chunked prefill: every step decodes each of
    them and carries its share of the prompts being prefilled (concurrency x prompt tokens per `output` steps),
    all at mean contexts."""
    prefill = (concurrency * prompt // output, prompt // 2)  # prompt tokens per step, at the mean position
    shape = StepShape(prefills=(prefill,), decodes=(prompt + output // 2,) * concurrency)
    return concurrency / step_cost(shape, d).total


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
