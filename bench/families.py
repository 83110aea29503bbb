"""Each model family the engine loads, measured on a tiny random checkpoint written by transformers (the test
extra): greedy continuations against transformers' own, the prefix hit on a repeated prompt, and the KV bytes
per token the engine's pages hold against what `kvcache/sizing.py` prices (the report's figure).

Per family: `--prompts` prompts of 40-80 tokens (they cross the 8-token windows of the sliding families),
`--tokens` greedy tokens each, batched through the engine and one by one through `generate` of transformers;
the first prompt again (cached tokens / prompt tokens); the pool's page bytes / block size against
`kv_bytes_per_token`, and the sliding group's pages a decoding sequence holds against `state_bytes`.
Run: .venv/bin/python -m bench.families [--prompts 6] [--tokens 12] [--codec bf16] [--markdown]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from agentkv.engine.llm import LLM
from agentkv.engine.sequence import SamplingParams
from agentkv.kvcache.sizing import codec, kv_bytes_per_token, state_bytes

FAMILIES = ["llama3", "qwen3", "qwen3_moe", "gemma3", "gpt_oss", "llama4", "deepseek_v3", "qwen3_next"]
BS = 8


def measure(family: str, folder: Path, n: int, tokens: int, kv_codec: str) -> dict[str, str]:
    from tests.engine.conftest import hf_model, prompts, write_checkpoint

    write_checkpoint(folder, family)
    ps = prompts(n, seed=11, lo=40, hi=80)
    greedy = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    ref = hf_model(folder)
    with torch.no_grad():
        expected = [ref.generate(torch.tensor([p]), max_new_tokens=tokens, do_sample=False, eos_token_id=None,
                                 pad_token_id=0, min_new_tokens=tokens)[0, len(p):].tolist() for p in ps]
    llm = LLM(str(folder), dtype="float32", block_size=BS, kv_cache_bytes=2**26, check_invariants=True)
    got = [o.outputs[0].token_ids for o in llm.generate(ps, greedy)]
    again = llm.generate([ps[0]], greedy)[0]
    quant = LLM(str(folder), dtype="float32", kv_codec=kv_codec, block_size=BS, kv_cache_bytes=2**26)
    spec, cs = quant.config.spec(family), codec(kv_codec)
    held = "-"
    if quant.sliding is not None:
        quant.add_request(ps[0], greedy)
        most = 0
        while quant.has_unfinished_requests():
            quant.step()
            most = max([most] + [sum(1 for p in s.window_pages if p) for s in quant.scheduler.running
                                 if s.generated >= 2])
        held = f"{most * quant.sliding.layout.page_bytes:,} vs {state_bytes(spec, cs, BS):,.0f}"
    return {"family": family, "layers": quant.layers_text(),
            "greedy": f"{sum(a == b for a, b in zip(got, expected, strict=True))}/{n}",
            "hit": f"{again.num_cached_tokens}/{len(ps[0])}" + (" =" if again.outputs[0].token_ids == expected[0]
                                                                else " differs"),
            "pool": f"{quant.layout.page_bytes / BS:,.0f} vs {kv_bytes_per_token(spec, cs, BS):,.0f}",
            "window": held}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=12)
    ap.add_argument("--codec", default="bf16")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fam in FAMILIES:
            rows.append(measure(fam, Path(tmp) / fam, args.prompts, args.tokens, args.codec))
    heads = ["family", "layers (as the start-up line names them)", "greedy = transformers",
             "repeated prompt: cached / prompt tokens (output)",
             f"pool B/token ({args.codec}) vs sizing.py", "window pages held vs state_bytes (B)"]
    keys = ["family", "layers", "greedy", "hit", "pool", "window"]
    if args.markdown:
        print("| " + " | ".join(heads) + " |\n|" + "---|" * len(heads))
        for r in rows:
            print("| " + " | ".join(r[k] for k in keys) + " |")
    else:
        for r in rows:
            print("  ".join(f"{k}={r[k]}" for k in keys))


if __name__ == "__main__":
    main()
