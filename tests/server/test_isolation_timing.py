"""The side channel of a shared prefix cache (Gu et al., 2025): a cached prompt answers faster, so timing a
guess at someone's prompt tells whether they sent it. Here, tenant globex probes prompts tenant acme sent and
sees the same time to first token as for prompts nobody sent, while acme's own repeats show the gap a shared
cache would leak (the control that shows the test can see such a gap)."""

from __future__ import annotations

import random
import statistics
import time

import openai
import pytest

from tests.engine.conftest import WORDS

N = 10
LENGTH = 600  # tokens: prefill then dominates the time to first token


def prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(LENGTH))


def ttft(c: openai.OpenAI, text: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    r = c.completions.create(model="tiny", prompt=text, max_tokens=1, temperature=0)
    return time.perf_counter() - t0, r.usage.prompt_tokens_details.cached_tokens


@pytest.fixture(scope="module")
def tenants(start, plain_dir, tmp_path_factory):
    keys = tmp_path_factory.mktemp("timing") / "keys"
    keys.write_text("sk-acme acme\nsk-globex globex\n")
    srv = start("--model", str(plain_dir), "--served-model-name", "tiny", "--kv-cache-gb", "0.05",
                "--api-keys", str(keys))
    return (openai.OpenAI(base_url=srv.url + "/v1", api_key="sk-acme", max_retries=0),
            openai.OpenAI(base_url=srv.url + "/v1", api_key="sk-globex", max_retries=0))


def test_probing_another_tenants_prefix_shows_no_timing_difference(tenants):
    acme, globex = tenants
    rng = random.Random(0)
    ttft(globex, prompt(rng))  # warm-up
    secrets = [prompt(rng) for _ in range(N)]
    for s in secrets:
        ttft(acme, s)  # acme's prompts are now cached, in acme's namespace
    hit, miss, probe, fresh = [], [], [], []
    for s in secrets:  # interleaved, so drift in the machine's load hits every series alike
        t, cached = ttft(acme, s)
        assert cached >= LENGTH - 16
        hit.append(t)
        miss.append(ttft(acme, prompt(rng))[0])
        t, cached = ttft(globex, s)
        assert cached == 0  # the mechanism: globex's lookup never finds acme's blocks
        probe.append(t)
        fresh.append(ttft(globex, prompt(rng))[0])
    med = {k: statistics.median(v) * 1e3 for k, v in
           {"acme hit": hit, "acme miss": miss, "globex probe": probe, "globex fresh": fresh}.items()}
    gap = med["acme miss"] - med["acme hit"]  # what a shared cache would leak
    seen = med["globex probe"] - med["globex fresh"]  # what globex can observe
    spread = statistics.median(abs(t * 1e3 - med["globex fresh"]) for t in fresh)  # MAD of a miss
    print(f"\ntiming (median ms over {N}, {LENGTH}-token prompts): "
          + ", ".join(f"{k} {v:.1f}" for k, v in med.items())
          + f"; leak a shared cache would show {gap:.1f} ms, globex sees {seen:+.1f} ms (MAD {spread:.1f} ms)")
    assert gap > 4 * spread  # the control: a cache hit is plainly visible at this prompt length ...
    assert abs(seen) < max(gap / 4, 2 * spread)  # ... and globex's probes look like misses
