"""What Qwen3-Next's state snapshots buy on agentic turns: prefill tokens computed and wall time with snapshots
kept at the policy's block boundaries, against the same engine keeping none (`state_snapshots=0`: every prefix
hit on the DeltaNet layers falls back to token 0, so the pages' hit saves nothing), measured in the same run.

A random Qwen3-Next checkpoint written by transformers (the test extra; `--hidden`, 3 DeltaNet layers to 1
gated full-attention layer, MoE 8 experts top 2 with a shared expert) serves `--sessions` agent sessions of
`--turns` turns: each turn's prompt is the previous prompt, its reply (`--reply` greedy tokens) and a
`--tool`-token tool result, sessions interleaved turn by turn. Both engines give the same tokens (checked).
Time is the process's CPU time (best of `--repeat`, after a warm-up run), so other jobs on a shared machine
do not blur it.
Run: .venv/bin/python -m bench.state_snapshots [--sessions 2] [--turns 4] [--first 256] [--hidden 256] [--repeat 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from agentkv.engine.llm import LLM
from agentkv.engine.sequence import SamplingParams
from bench._common import best_of, machine


def write_model(folder: Path, hidden: int) -> Path:
    from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

    from tests.engine.conftest import write_tokenizer

    torch.manual_seed(0)
    heads = hidden // 64
    cfg = Qwen3NextConfig(vocab_size=512, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=4,
                          num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), head_dim=64,
                          linear_num_key_heads=heads, linear_num_value_heads=2 * heads, linear_key_head_dim=32,
                          linear_value_head_dim=32, moe_intermediate_size=hidden // 2,
                          shared_expert_intermediate_size=hidden // 2, num_experts=8, num_experts_per_tok=2,
                          max_position_embeddings=8192, bos_token_id=0, eos_token_id=1)
    Qwen3NextForCausalLM(cfg).float().eval().save_pretrained(str(folder))
    write_tokenizer(folder)
    return folder


def run(folder: Path, snapshots: int | None, args) -> tuple[int, int, list[list[int]]]:
    """(prompt tokens asked, prompt tokens served from the cache, every reply) over the sessions' turns."""
    llm = LLM(str(folder), dtype="float32", block_size=16, kv_cache_bytes=2**28, state_snapshots=snapshots)
    g = torch.Generator().manual_seed(1)
    greedy = SamplingParams(max_tokens=args.reply, temperature=0, ignore_eos=True)
    prompts = [torch.randint(2, 512, (args.first,), generator=g).tolist() for _ in range(args.sessions)]
    replies = []
    for _ in range(args.turns):
        outs = [llm.generate([p], greedy)[0] for p in prompts]
        replies += [o.outputs[0].token_ids for o in outs]
        prompts = [[*p, *o.outputs[0].token_ids, *torch.randint(2, 512, (args.tool,), generator=g).tolist()]
                   for p, o in zip(prompts, outs, strict=True)]
    return llm.prefix_query_tokens, int(llm.prefix_hit_tokens.sum()), replies


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--turns", type=int, default=4)
    ap.add_argument("--first", type=int, default=256, help="the first turn's prompt tokens")
    ap.add_argument("--reply", type=int, default=24)
    ap.add_argument("--tool", type=int, default=40)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)  # CPU time of one thread: no spinning pool threads counted on a shared machine
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_model(Path(tmp) / "qwen3-next", args.hidden)
        run(folder, None, args)  # warm-up: torch's first calls
        t_on, (asked, hit_on, out_on) = best_of(lambda: run(folder, None, args), args.repeat, time.process_time)
        t_off, (_, hit_off, out_off) = best_of(lambda: run(folder, 0, args), args.repeat, time.process_time)
    assert out_on == out_off, "snapshots changed the replies"
    print(f"{args.sessions} sessions x {args.turns} turns, {asked:,} prompt tokens; {machine()}")
    print(f"snapshots kept: {asked - hit_on:>7,} prefill tokens computed, {t_on:6.2f} CPU s")
    print(f"none kept:      {asked - hit_off:>7,} prefill tokens computed, {t_off:6.2f} CPU s")
    print(f"ratio (none / kept): {(asked - hit_off) / max(1, asked - hit_on):.2f}x tokens, {t_off / t_on:.2f}x time")


if __name__ == "__main__":
    main()
