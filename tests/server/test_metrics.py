"""Prometheus /metrics, parsed with prometheus_client's own parser after real traffic."""

from __future__ import annotations

import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

SYSTEM = "hello world the agent writes code and tests " * 5


def scrape(server) -> dict[tuple[str, tuple], float]:
    r = httpx.get(server.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(r.text) for s in fam.samples}


def test_metrics_follow_the_traffic(server):
    before = scrape(server)
    c = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    for user in ("fix bug", "done"):
        c.chat.completions.create(model="tiny", max_tokens=4, temperature=0, messages=[
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": user}], extra_body={"ignore_eos": True})
    after = scrape(server)

    def grew(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert grew("agentkv_requests_total", endpoint="chat", finish_reason="length") == 2
    assert grew("agentkv_time_to_first_token_seconds_count") == 2
    assert grew("agentkv_e2e_request_latency_seconds_count") == 2
    assert grew("agentkv_time_per_output_token_seconds_count") == 2
    assert grew("agentkv_generation_tokens_total") == 8
    queries, hits = grew("agentkv_prefix_cache_queries_tokens_total"), grew("agentkv_prefix_cache_hits_tokens_total")
    assert queries > hits >= 48  # the second request found the system prompt
    assert grew("agentkv_cached_tokens_total", tier="gpu") == hits
    assert after[("agentkv_kv_blocks_total", (("tier", "gpu"),))] > after[("agentkv_kv_blocks_used", (("tier", "gpu"),))] > 0
    assert after[("agentkv_num_requests_waiting", ())] == 0 and after[("agentkv_requests_in_flight", ())] == 0
