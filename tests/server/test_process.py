"""The `agentkv serve` process: SIGTERM drains requests in flight, then exits; a loopback load test with
64 concurrent streaming clients (every request completes or gets an explicit 429; none lost; memory back
near its baseline; TTFT percentiles printed)."""

from __future__ import annotations

import asyncio
import signal
import statistics
import time

import httpx
import openai
import pytest


@pytest.fixture(scope="module")
def srv(spawn, plain_dir):
    return spawn("--model", str(plain_dir), "--served-model-name", "tiny", "--kv-cache-gb", "0.02",
                 "--max-num-seqs", "16", "--max-queue", "16")


async def one_client(c: openai.AsyncOpenAI, i: int) -> tuple[str, float]:
    t0 = time.perf_counter()
    ttft = float("nan")
    try:
        stream = await c.chat.completions.create(
            model="tiny", max_tokens=16, temperature=0, stream=True, stream_options={"include_usage": True},
            messages=[{"role": "system", "content": "the agent reads a file and calls a tool " * 4},
                      {"role": "user", "content": f"fix bug {'python rust go '[i % 3 * 2:]} " * (i % 7 + 1)}],
            extra_body={"ignore_eos": True})
        finish, usage = None, None
        async for ch in stream:
            if ch.choices and ch.choices[0].delta.content and ttft != ttft:
                ttft = time.perf_counter() - t0
            if ch.choices and ch.choices[0].finish_reason:
                finish = ch.choices[0].finish_reason
            usage = ch.usage or usage
        assert finish == "length" and usage.completion_tokens == 16
        return "done", ttft
    except openai.RateLimitError as e:
        assert int(e.response.headers["retry-after"]) >= 1
        return "429", ttft


async def load(url: str, n: int) -> list[tuple[str, float]]:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0,
                                  http_client=None) as c:
        return await asyncio.gather(*(one_client(c, i) for i in range(n)))


def test_64_concurrent_streaming_clients(srv):
    asyncio.run(load(srv.url, 32))  # warm-up: first-use allocations are the baseline, not a leak
    baseline = srv.rss_mib()
    results = asyncio.run(load(srv.url, 64)) + asyncio.run(load(srv.url, 64))
    after = srv.rss_mib()
    done = [t for kind, t in results if kind == "done"]
    rejected = sum(kind == "429" for kind, _ in results)
    assert len(results) == 2 * 64 and len(done) + rejected == len(results)  # none lost
    assert len(done) >= 2 * 32  # everything admitted (16 running + 16 queued) finished
    stats = httpx.get(srv.url + "/metrics").text
    assert "agentkv_requests_in_flight 0.0" in stats and "agentkv_num_requests_running 0.0" in stats
    q = statistics.quantiles(done, n=100)
    print(f"\nload: 2 x 64 concurrent streaming clients: {len(done)} done, {rejected} got 429; "
          f"TTFT p50 {q[49] * 1e3:.0f} ms, p99 {q[98] * 1e3:.0f} ms; server RSS {baseline:.0f} MiB after "
          f"warm-up, {after:.0f} MiB after the load")
    assert after - baseline < 48, f"RSS grew {after - baseline:.0f} MiB"


def test_sigterm_drains_requests_in_flight_then_exits(srv):
    """Last in this module: it ends the server the load test used."""
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
    stream = c.completions.create(model="tiny", prompt="the agent", max_tokens=200, stream=True,
                                  stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = [next(stream)]
    srv.proc.send_signal(signal.SIGTERM)  # mid-reply
    chunks += list(stream)
    assert chunks[-1].usage.completion_tokens == 200  # the reply was finished, not cut
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert srv.proc.wait(60) == -signal.SIGTERM  # after draining, it ends by the signal it got (uvicorn's way)
    try:
        httpx.get(srv.url + "/health", timeout=2)
        raise AssertionError("the server still answers after draining")
    except httpx.TransportError:
        pass
