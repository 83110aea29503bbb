"""Prometheus metrics. Request latencies are observed by the server as each request streams; the engine's
state (queue, running batch, KV blocks and prefix-cache hits per tier) is read from `engine.stats()` at each
scrape, so the two can never drift apart. Names follow Prometheus conventions (`_total`, `_seconds`);
the vLLM/SGLang equivalents are noted beside each."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self, stats: Callable[[], Any]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram("agentkv_time_to_first_token_seconds", "Arrival to first token (vllm:time_to_first_token_seconds)",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("agentkv_time_per_output_token_seconds", "Mean gap between a request's output tokens after the first",
                              buckets=TPOT_BUCKETS, registry=r)
        self.e2e = Histogram("agentkv_e2e_request_latency_seconds", "Arrival to last token",
                             buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("agentkv_requests", "Finished requests by endpoint and finish reason",
                                ["endpoint", "finish_reason"], registry=r)
        self.rejected = Counter("agentkv_requests_rejected", "Requests refused before admission, by reason",
                                ["reason"], registry=r)
        self.prompt_tokens = Counter("agentkv_prompt_tokens", "Prompt tokens of finished requests", registry=r)
        self.generation_tokens = Counter("agentkv_generation_tokens", "Output tokens of finished requests", registry=r)
        self.in_flight = Gauge("agentkv_requests_in_flight", "Requests admitted and not yet finished", registry=r)
        r.register(_EngineCollector(stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _EngineCollector:
    def __init__(self, stats: Callable[[], Any]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Any]:
        s = self.stats()
        yield GaugeMetricFamily("agentkv_num_requests_waiting", "Queue depth (vllm:num_requests_waiting)", value=s.waiting)
        yield GaugeMetricFamily("agentkv_num_requests_running", "Requests in the running batch", value=s.running)
        used = GaugeMetricFamily("agentkv_kv_blocks_used", "KV blocks holding data, per tier", labels=["tier"])
        total = GaugeMetricFamily("agentkv_kv_blocks_total", "KV blocks per tier", labels=["tier"])
        for tier, n in s.kv_blocks_used.items():
            used.add_metric([tier], n)
        for tier, n in s.kv_blocks_total.items():
            total.add_metric([tier], n)
        yield used
        yield total
        yield CounterMetricFamily("agentkv_prefix_cache_queries_tokens", "Prompt tokens looked up in the prefix cache "
                                  "(vllm:prefix_cache_queries)", value=s.prefix_query_tokens)
        yield CounterMetricFamily("agentkv_prefix_cache_hits_tokens", "Prompt tokens found in the prefix cache "
                                  "(vllm:prefix_cache_hits)", value=s.prefix_hit_tokens)
        hits = CounterMetricFamily("agentkv_cached_tokens", "Prompt tokens served from cache, by the tier they were "
                                   "found in (sglang:cached_tokens_total{cache_source})", labels=["tier"])
        for tier, n in s.hit_tokens_per_tier.items():
            hits.add_metric([tier], n)
        yield hits
