"""What speculative decoding buys, by batch: each sequence's output speed decoding one token a step and with MTP /
EAGLE (the draft, a k+1-token verification a step, the stated acceptance length), and the ratio of decode
GPU-seconds per output token (decode's share of $/Mtok) between them. Modelled by the step cost, not measured.

    python -m bench.speculative

Cases: DeepSeek-V3 (R1 shapes) NVFP4 on 8x B200 TP8 + EP8 with its one MTP module at an acceptance length of 1.85
(85-90% of the drafted token accepted: DeepSeek-V3 technical report, arXiv 2412.19437 §5.4.3, 2024-12-27); the
same with three drafted tokens at 2.5 (a choice, not a published figure); Qwen3-Next FP8 on one H200 with one MTP
token at 1.85 (DeepSeek-V3's figure borrowed: Qwen publishes none).
"""

from __future__ import annotations

from agentkv.catalog import hardware, model
from agentkv.kvcache.sizing import codec
from agentkv.report.levers import speculation_gains
from agentkv.sim.speculative import Speculation
from agentkv.sim.stepcost import Deployment

CONTEXT = 8192
CASES = (
    ("DeepSeek-V3 NVFP4, 8x B200 TP8+EP8, MTP 1 token at 1.85",
     Deployment(hardware("b200"), model("deepseek-v3"), codec("fp8"), tp=8, weight_dtype="fp4", ep=True,
                speculation=Speculation(1, 1.85))),
    ("DeepSeek-V3 NVFP4, 8x B200 TP8+EP8, 3 tokens at 2.5 (a choice)",
     Deployment(hardware("b200"), model("deepseek-v3"), codec("fp8"), tp=8, weight_dtype="fp4", ep=True,
                speculation=Speculation(3, 2.5))),
    ("Qwen3-Next FP8, 1x H200, MTP 1 token at 1.85",
     Deployment(hardware("h200"), model("qwen3-next-80b-a3b"), codec("bf16"), weight_dtype="fp8",
                speculation=Speculation(1, 1.85))),
)


def markdown() -> str:
    rows = ["| case | batch | tok/s a sequence, plain | with speculation | speedup | decode $/Mtok, spec / plain |",
            "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, d in CASES:
        for g in speculation_gains(d, CONTEXT, (1, 8, 64, 256)):
            rows.append(f"| {name} | {g.batch} | {g.plain_tps:.1f} | {g.speculative_tps:.1f} | "
                        f"{g.speculative_tps / g.plain_tps:.2f}x | {g.cost_ratio:.2f} |")
    return "\n".join(rows)


def main() -> None:
    print(f"decoding at {CONTEXT:,} tokens of context\n")
    print(markdown())


if __name__ == "__main__":
    main()
