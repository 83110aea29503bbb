"""The prefix cache's timing side channel (Gu et al., 2025), measured: a cached prompt answers faster, so timing
a guess at another tenant's prompt would tell whether they sent it. Tenant acme sends secret prompts; then, in
shuffled rounds, acme repeats one (a hit: the gap a shared cache would leak, the control) and sends a new one,
and tenant globex sends acme's secret (the probe) and a new prompt. Prints median TTFTs and, per pair, the
ratio and a sign count over rounds: the control shows the gap, the probe must not.

    python -m bench.isolation_timing [--rounds 32] [--length 1000]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._common import machine
from bench.replay_serve import start_server, write_model


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=32)
    p.add_argument("--length", type=int, default=1000, help="words per prompt (one token each)")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    args = p.parse_args()
    import openai

    from agentkv.replay.alphabet import BUILTIN

    work = Path(tempfile.mkdtemp(prefix="isolation-bench-"))
    model = write_model(work / "model", args.layers, args.hidden, 4096)
    (work / "keys").write_text("sk-acme acme\nsk-globex globex\n")
    proc, url = start_server(model, 0.05, 16, "--api-keys", str(work / "keys"))
    rng = random.Random(0)
    words = BUILTIN[:500]

    def prompt() -> str:
        return " ".join(rng.choice(words) for _ in range(args.length))

    def ttft(c: openai.OpenAI, text: str) -> tuple[float, int]:
        t0 = time.perf_counter()
        r = c.completions.create(model=model.name, prompt=text, max_tokens=1, temperature=0)
        return time.perf_counter() - t0, r.usage.prompt_tokens_details.cached_tokens

    try:
        acme, globex = (openai.OpenAI(base_url=url + "/v1", api_key=k, max_retries=0) for k in ("sk-acme", "sk-globex"))
        ttft(globex, prompt())  # warm-up
        secrets = [prompt() for _ in range(args.rounds)]
        for s in secrets:
            ttft(acme, s)
        times: dict[str, list[float]] = {"acme hit": [], "acme miss": [], "globex probe": [], "globex fresh": []}
        cached: dict[str, list[int]] = {k: [] for k in times}
        for s in secrets:
            calls = [("acme hit", acme, s), ("acme miss", acme, prompt()), ("globex probe", globex, s),
                     ("globex fresh", globex, prompt())]
            rng.shuffle(calls)  # no series always runs first, or right after a slow one
            for name, client, text in calls:
                t, hit = ttft(client, text)
                times[name].append(1e3 * t)
                cached[name].append(hit)
    finally:
        proc.terminate()
        proc.wait(60)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nmachine: {machine()}; model: random-weight Llama ({args.layers} layers, {args.hidden} hidden, fp32) "
          f"on CPU; {args.rounds} rounds of {args.length}-token prompts, max_tokens 1\n")
    print("| request | TTFT p50 (ms) | cached tokens p50 |")
    print("| --- | --- | --- |")
    for k, v in med.items():
        print(f"| {k} | {v:.1f} | {statistics.median(cached[k]):.0f} |")
    for a, b in (("acme hit", "acme miss"), ("globex probe", "globex fresh")):
        faster = sum(x < y for x, y in zip(times[a], times[b], strict=True))
        print(f"\n{a} / {b}: {med[a] / med[b]:.2f}x the TTFT; faster in {faster}/{args.rounds} rounds")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
