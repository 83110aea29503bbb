"""Published measurements the step-cost model is held against, each with its source and date.

Each entry says what was measured and computes agentkv's modelled figure for the same workload on the catalog's
hardware and model, so `python -m bench.calibration` and the unit tests read one table. The overheads these fix
(`Coefficients.seq_overhead_s`, `collective_latency_s`, `host_load_latency_s`) name the entry they come from.
Figures are as cited in issue 20 (2026-12-03); the sources' own pages were not re-read for this table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agentkv.catalog import hardware, model
from agentkv.kvcache.sizing import codec, kv_bytes_per_token
from agentkv.sim.stepcost import (
    Deployment,
    StepShape,
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
    modelled: Callable[[], float]

    @property
    def ratio(self) -> float:
        """published / modelled: 1 is a perfect model, > 1 an optimistic one."""
        return self.published / self.modelled()


def _dep(hw: str, m: str, tp: int = 1, weights: str = "bf16") -> Deployment:
    return Deployment(hardware(hw), model(m), codec("bf16"), tp=tp, weight_dtype=weights)


def end_to_end_ms(d: Deployment, batch: int, prompt: int, output: int) -> float:
    """A batch arriving together: its prompts prefilled in one chunk, then `output` decode steps."""
    pre = step_cost(StepShape(prefills=((prompt, 0),) * batch), d).total  # one step holds the batch's prompts
    dec = sum(decode_seconds(batch, prompt + k, d) for k in range(1, output))
    return 1e3 * (pre + dec)


def reload_speedup(d: Deployment, prompt: int) -> float:
    """Recompute of a prompt over its reload from host DRAM."""
    return prefill_seconds(prompt, d, 8192) / transfer_seconds({"host": prompt * kv_bytes_per_token(d.model, d.kv_codec)}, d)


MEASUREMENTS = (
    Measurement("Llama-3.1-8B, H200 TP1, batch 8, 32 in / 128 out, end to end", "ms", 833.0,
                "vLLM CI latency benchmark (perf.vllm.ai, H200), as cited in issue 20",
                lambda: end_to_end_ms(_dep("h200", "llama-3.1-8b"), 8, 32, 128)),
    Measurement("Llama-3-70B (as Llama-3.1-70B), H200 TP4, batch 8, 32 in / 128 out, end to end", "ms", 2077.0,
                "vLLM CI latency benchmark (perf.vllm.ai, H200), as cited in issue 20",
                lambda: end_to_end_ms(_dep("h200", "llama-3.1-70b", tp=4), 8, 32, 128)),
    Measurement("Llama-3.3-70B fp8 (as 3.1-70B), 2x H100 TP2, 5000 in, c=1: TTFT", "ms", 407.0,
                "NVIDIA NIM for LLMs benchmarking page (docs.nvidia.com/nim), as cited in issue 20",
                lambda: 1e3 * (prefill_seconds(5000, _dep("h100-sxm", "llama-3.1-70b", 2, "fp8"), 8192)
                               + decode_seconds(1, 5001, _dep("h100-sxm", "llama-3.1-70b", 2, "fp8")))),
    Measurement("Llama-3.3-70B fp8 (as 3.1-70B), 2x H100 TP2, 5000 in / 500 out, c=1: ITL", "ms", 18.6,
                "NVIDIA NIM for LLMs benchmarking page (docs.nvidia.com/nim), as cited in issue 20",
                lambda: 1e3 * decode_seconds(1, 5250, _dep("h100-sxm", "llama-3.1-70b", 2, "fp8"))),
    Measurement("DRAM reload vs recompute, Llama-3.1-8B, H100, 1k-token prompt", "x", 2.0,
                "vLLM blog 'Inside vLLM's new KV offloading connector' (blog.vllm.ai, early 2026: 2-22x faster "
                "TTFT from CPU DRAM, the low end for short prompts), ~2x at 1k as cited in issue 20",
                lambda: reload_speedup(_dep("h100-sxm", "llama-3.1-8b"), 1000)),
)
