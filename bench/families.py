"""Each model family the engine loads, measured on a tiny random checkpoint written by transformers (the test
extra): greedy continuations against transformers' own, the prefix hit on a repeated prompt, and the KV bytes
per token the engine's pages hold against what `kvcache/sizing.py` prices (the report's figure), and the
prompts reloaded by an engine restarted on a disk folder and on a Redis server (a redis-server this run starts).

Per family: `--prompts` prompts of 40-80 tokens (they cross the 8-token windows of the sliding families),
`--tokens` greedy tokens each, batched through the engine and one by one through `generate` of transformers;
the first prompt again (cached tokens / prompt tokens); the pool's page bytes / block size against
`kv_bytes_per_token`, and the sliding group's pages a decoding sequence holds against `state_bytes`; an engine
with a disk (then a Redis) tier runs the prompts and closes, a fresh one on the same tier runs the first
prompt again: its tokens read from the tier / prompt tokens, and whether its output still equals.
DeepSeek-V4: blocks of 16 (its pages hold whole compressed entries), transformers' greedy by full forwards.
Run: .venv/bin/python -m bench.families [--prompts 6] [--tokens 12] [--codec bf16] [--markdown] [--only a,b]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from agentkv.engine.llm import LLM
from agentkv.engine.sequence import SamplingParams
from agentkv.kvcache.sizing import codec, kv_bytes_per_token, state_bytes
from bench.tiers import start_redis

FAMILIES = [  # one line a family: its name in tests/engine/conftest.py's write_checkpoint
    "llama3",
    "qwen3",
    "qwen3_moe",
    "gemma3",
    "gpt_oss",
    "llama4",
    "gemma3_vision",
    "llama4_vision",
    "deepseek_v3",
    "qwen3_next",
    "deepseek_v4",
]
BLOCK_SIZE = {"deepseek_v4": 16}  # V4's pages hold whole compressed entries (its ratios: 4 and 16); others 8


def block_size(family: str) -> int:
    return BLOCK_SIZE.get(family, 8)


def transformers_greedy(family: str, folder: Path, ps: list[list[int]], tokens: int) -> list[list[int]]:
    """Each prompt's greedy continuation by transformers: `generate`, or for DeepSeek-V4 repeated full forwards
    (its cached `generate` drifts from its own forward at near-ties in the indexer's top-k)."""
    from tests.engine.conftest import hf_model

    ref = hf_model(folder)
    out = []
    with torch.no_grad():
        for p in ps:
            if family != "deepseek_v4":
                out.append(ref.generate(torch.tensor([p]), max_new_tokens=tokens, do_sample=False,
                                        eos_token_id=None, pad_token_id=0, min_new_tokens=tokens)[0, len(p):].tolist())
                continue
            seq = list(p)
            for _ in range(tokens):
                seq.append(int(ref(torch.tensor([seq]), use_cache=False).logits[0, -1].argmax()))
            out.append(seq[len(p):])
    return out


def reload(folder: Path, ps: list[list[int]], greedy: SamplingParams, expected: list[int], tier: str,
           spec: str, bs: int) -> str:
    """The first prompt run by an engine restarted on `spec`'s tier: 'read from the tier / prompt (output)'."""
    first = LLM(str(folder), dtype="float32", block_size=bs, kv_cache_bytes=2**26, kv_tiers=spec)
    first.generate(ps, greedy)
    first.close()
    restarted = LLM(str(folder), dtype="float32", block_size=bs, kv_cache_bytes=2**26, kv_tiers=spec)
    out = restarted.generate([ps[0]], greedy)[0]
    restarted.close()
    same = " =" if out.outputs[0].token_ids == expected else " differs"
    return f"{out.cached_tokens_per_tier[tier]}/{len(ps[0])}{same}"


def measure(family: str, folder: Path, n: int, tokens: int, kv_codec: str, redis_url: str) -> dict[str, str]:
    from tests.engine.conftest import prompts, write_checkpoint

    write_checkpoint(folder, family)
    ps = prompts(n, seed=11, lo=40, hi=80)
    greedy = SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True)
    expected = transformers_greedy(family, folder, ps, tokens)
    bs = block_size(family)
    llm = LLM(str(folder), dtype="float32", block_size=bs, kv_cache_bytes=2**26, check_invariants=True)
    got = [o.outputs[0].token_ids for o in llm.generate(ps, greedy)]
    again = llm.generate([ps[0]], greedy)[0]
    quant = LLM(str(folder), dtype="float32", kv_codec=kv_codec, block_size=bs, kv_cache_bytes=2**26)
    spec, cs = quant.config.spec(family), codec(kv_codec)
    held = "-"
    if quant.sliding is not None:
        quant.add_request(ps[0], greedy)
        most = 0
        while quant.has_unfinished_requests():
            quant.step()
            most = max([most] + [sum(1 for p in s.window_pages if p) for s in quant.scheduler.running
                                 if s.generated >= 2])
        held = f"{most * quant.sliding.layout.page_bytes:,} vs {state_bytes(spec, cs, bs):,.0f}"
    return {"family": family, "layers": quant.layers_text(),
            "greedy": f"{sum(a == b for a, b in zip(got, expected, strict=True))}/{n}",
            "hit": f"{again.num_cached_tokens}/{len(ps[0])}" + (" =" if again.outputs[0].token_ids == expected[0]
                                                                else " differs"),
            "pool": f"{quant.layout.page_bytes / bs:,.0f} vs {kv_bytes_per_token(spec, cs, bs):,.0f}",
            "window": held,
            "disk": reload(folder, ps, greedy, expected[0], "disk", f"disk=64MiB@{folder / 'disk-tier'}", bs),
            "redis": reload(folder, ps, greedy, expected[0], "remote", f"redis=64MiB@{redis_url}", bs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=12)
    ap.add_argument("--codec", default="bf16")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--only", default="", help="comma-separated families to measure (default: all)")
    args = ap.parse_args()
    only = [f for f in args.only.split(",") if f]
    unknown = sorted(set(only) - set(FAMILIES))
    if unknown:
        ap.error(f"--only: unknown families {', '.join(unknown)} (known: {', '.join(FAMILIES)})")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_redis(Path(tmp))
        try:
            for fam in only or FAMILIES:
                rows.append(measure(fam, Path(tmp) / fam, args.prompts, args.tokens, args.codec, url))
        finally:
            server.kill()
            server.wait()
    heads = ["family", "layers (as the start-up line names them)", "greedy = transformers",
             "repeated prompt: cached / prompt tokens (output)",
             f"pool B/token ({args.codec}) vs sizing.py", "window pages held vs state_bytes (B)",
             "restarted on disk: read / prompt tokens (output)", "restarted on Redis: read / prompt tokens (output)"]
    keys = ["family", "layers", "greedy", "hit", "pool", "window", "disk", "redis"]
    if args.markdown:
        print("| " + " | ".join(heads) + " |\n|" + "---|" * len(heads))
        for r in rows:
            print("| " + " | ".join(r[k] for k in keys) + " |")
    else:
        for r in rows:
            print("  ".join(f"{k}={r[k]}" for k in keys))


if __name__ == "__main__":
    main()
