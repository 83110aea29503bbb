"""`agentkv serve --replicas 2` on a local Ray cluster: two tiny-model engine replicas on Ray Serve behind the
gateway and agentkv's router, sharing a real redis-server, driven by the official openai client."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.engine.conftest import WORDS, write_checkpoint
from tests.replay.conftest import write_trace
from tests.storage.conftest import RedisServer


class Gateway:
    """`agentkv serve --replicas N ...`'s gateway app (replicas deployed on the test's cluster), run by uvicorn
    on a free loopback port in a thread."""

    def __init__(self, flags: list[str]) -> None:
        import uvicorn

        from agentkv.cli import build_parser
        from agentkv.cluster.serve import start

        app = start(build_parser().parse_args(["serve", *flags]))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.uvicorn = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 180
        while True:  # up when the gateway answers and both replicas have reported their KV capacity
            assert time.monotonic() < deadline, "replicas did not start"
            try:
                if httpx.get(self.url + "/health", timeout=2).json().get("replicas") == 2:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)

    def stop(self) -> None:
        from ray import serve

        self.uvicorn.should_exit = True
        self.thread.join(30)
        serve.delete("agentkv")


@pytest.fixture(scope="module")
def redis(tmp_path_factory) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path_factory.mktemp("redis"))
    srv.start()
    yield srv
    srv.kill()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("plain"), "llama3", seed=3)


@pytest.fixture(scope="module")
def gateway(ray_cluster, redis, model) -> Iterator[Gateway]:
    gw = Gateway(["--model", str(model), "--served-model-name", "tiny", "--kv-cache-gb", "0.01",
                  "--max-num-seqs", "8", "--block-size", "16", "--replicas", "2",
                  "--kv-tiers", f"redis=64MiB@{redis.url}"])
    yield gw
    gw.stop()


def _ask(client, session: str, words: list[str], max_tokens: int = 4):
    raw = client.completions.with_raw_response.create(model="tiny", prompt=" ".join(words), max_tokens=max_tokens,
                                                      temperature=0.0, extra_headers={"x-session-id": session})
    return raw.headers["x-agentkv-replica"], raw.parse()


def _kill(replica: str) -> None:
    import ray
    from ray.serve._private.common import DeploymentID, ReplicaID

    rid = ReplicaID(replica, DeploymentID(name="EngineReplica", app_name="agentkv"))
    ray.kill(ray.get_actor(rid.to_full_id_str(), namespace="serve"))


def _words(session: str, n: int = 200) -> list[str]:
    """A session's own text (its prompts share no block with another session's)."""
    rng = np.random.default_rng(sum(map(ord, session)))
    return [WORDS[i] for i in rng.integers(0, len(WORDS), n)]


def test_replay_against_the_replicas_matches_the_prediction_per_replica(gateway, model, tmp_path):
    """First in this module: the router has seen no session yet, as the prediction's router has not."""
    from agentkv.cli import main

    trace = write_trace(tmp_path / "trace", sessions=4, turns=4, seed=3)
    out = tmp_path / "out"
    assert main(["replay", str(trace), "--endpoint", gateway.url, "--tokenizer", str(model), "--token-scale", "0.25",
                 "--time-scale", "0", "--max-tokens", "4", "--concurrency", "4", "--max-inflight", "1",
                 "--predict", "lru", "--out", str(out), "--json"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["ok"] == s["requests"] == 16 and s["prediction"].endswith("× 2 replicas, router session")
    assert len(s["per_replica"]) == 2  # the sessions were spread ...
    for row in s["per_replica"].values():  # ... as the simulator's router predicts, and each replica's hits too
        assert row["routed_as_predicted"] == row["requests"] and row["cached_tokens"] > 0
        assert row["cached_tokens"] == row["predicted_cached_tokens"]


@pytest.mark.parametrize("stream", [True, False])
def test_a_reply_read_to_its_end_no_longer_loads_its_replica(gateway, stream):
    """Serve reports a request done from a Ray callback thread, some time after its last byte: an agent's next
    turn, sent on reading [DONE], found the last one still counted on a loaded machine and was routed by timing
    (8 of 12 as predicted at a load average of 7-9). The gateway says so before the client can read the end."""
    from agentkv.cluster.routing import LIVE

    with httpx.Client(timeout=60) as c:
        for k in range(4):
            body = {"model": "tiny", "prompt": " ".join(_words(f"done{k}", 30)), "max_tokens": 4, "stream": stream}
            with c.stream("POST", gateway.url + "/v1/completions", json=body,
                          headers={"x-session-id": f"done{k}-{stream}"}) as r:
                assert r.status_code == 200
                if stream:  # up to [DONE], as an agent reads it, not to the end of the body
                    assert next(line for line in r.iter_lines() if line.startswith("data: [DONE]"))
                else:
                    r.read()
                load = {name: work for router in LIVE for name, work in router.load.items()}
            assert load and set(load.values()) == {0}, load


def test_sessions_stay_on_a_replica_and_move_with_their_prefix_in_redis_when_it_dies(gateway):
    from openai import OpenAI

    client = OpenAI(base_url=gateway.url + "/v1", api_key="none", timeout=60, max_retries=0)
    homes = {}
    for s in ("a", "b", "c", "d"):
        turns = [_ask(client, s, _words(s)[: 40 + 20 * t])[0] for t in range(3)]
        assert len(set(turns)) == 1, f"session {s} moved between replicas: {turns}"  # affinity
        homes[s] = turns[0]
    assert len(set(homes.values())) == 2  # new sessions go where the fewest sessions are, at equal work
    metrics = httpx.get(gateway.url + "/metrics").text
    assert 'agentkv_replicas{router="session"} 2' in metrics and "agentkv_kv_blocks_total" in metrics
    dead = homes["a"]
    _kill(dead)
    time.sleep(0.5)
    replica, out = _ask(client, "a", _words("a")[:100])  # the next turn: retried or routed to the survivor
    assert replica != dead
    details = out.usage.prompt_tokens_details
    assert details.cached_tokens >= 64  # the prefix computed on the dead replica, read from Redis
    assert details.model_extra["cached_tokens_per_tier"].get("remote", 0) >= 64, details  # the Redis tier


def test_a_replica_killed_mid_stream_ends_its_stream_and_hangs_nothing(gateway):
    body = {"model": "tiny", "prompt": " ".join(_words("long", 30)), "max_tokens": 3000, "stream": True,
            "ignore_eos": True}
    with httpx.Client(timeout=30) as c, c.stream("POST", gateway.url + "/v1/completions", json=body,
                                                 headers={"x-session-id": "long"}) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        next(lines)
        _kill(r.headers["x-agentkv-replica"])
        t = time.monotonic()
        rest = list(lines)  # ends (in-band error) instead of waiting on the dead replica
        assert time.monotonic() - t < 30
        assert any("replica lost" in line for line in rest)


def test_a_request_whose_replica_dies_before_answering_is_retried_on_another(gateway):
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    client = OpenAI(base_url=gateway.url + "/v1", api_key="none", timeout=60, max_retries=0)
    home, _ = _ask(client, "z", _words("z")[:20])
    with ThreadPoolExecutor(1) as pool:
        t = time.monotonic()
        long = pool.submit(_ask, client, "z", _words("z")[:40], 1500)  # non-streamed: nothing sent until done
        time.sleep(1.0)
        _kill(home)
        replica, out = long.result(timeout=90)
    assert replica != home and out.usage.completion_tokens == 1500 and time.monotonic() - t < 90
