"""`agentkv serve --replicas 2 --port P`, the real command in its own process, while another process holds
127.0.0.1:8000 (where Ray Serve's own proxy would bind): it starts, and its gateway refuses what the single
server refuses, with the same status codes, before a replica sees the request: no key 401, /metrics without
the metrics key 401, a 100 MiB body 413 before it is read, 20 KB of headers 431, a prompt over
--max-prompt-chars 400, a body over --max-body-items 413, a body slower than --body-timeout cut off, a
tenant past --max-tenant-inflight-bytes 429 (at the gateway, not once per replica). (Run under `flock /tmp/ray.lock`.)"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.engine.conftest import write_checkpoint

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[tuple[str, subprocess.Popen]]:
    folder = tmp_path_factory.mktemp("gateway-limits")
    model = write_checkpoint(folder / "model", "llama3", seed=3)
    (folder / "keys").write_text("key-a tenant-a\nkey-b tenant-b\n")
    (folder / "metrics-key").write_text("metrics-secret\n")
    squatter = socket.socket()  # whatever else holds :8000 on this machine
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        squatter.bind(("127.0.0.1", 8000))
        squatter.listen()
    except OSError:
        pass  # something holds it already: the same situation
    port = _free_port()
    log = open(folder / "serve.log", "wb")  # noqa: SIM115 (the child writes it)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentkv.cli", "serve", "--model", str(model), "--served-model-name", "tiny",
         "--kv-cache-gb", "0.01", "--replicas", "2", "--port", str(port), "--api-keys", str(folder / "keys"),
         "--metrics-key-file", str(folder / "metrics-key"), "--max-prompt-chars", "1000", "--body-timeout", "1",
         "--max-tenant-inflight-bytes", "1000000",
         "--log-level", "warning"], cwd=ROOT, stdout=log, stderr=log, env={**os.environ, "PYTHONPATH": str(ROOT)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    try:
        while True:
            assert proc.poll() is None, (folder / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the gateway did not start"
            try:
                if httpx.get(url + "/health", timeout=2).json().get("replicas") == 2:
                    break
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        squatter.close()
        assert "Traceback" not in (folder / "serve.log").read_text()


KEY = {"authorization": "Bearer key-a"}
ASK = {"model": "tiny", "prompt": "hi", "max_tokens": 2}


def test_it_serves_with_the_key_and_refuses_without(gateway):
    url, _ = gateway
    assert httpx.post(url + "/v1/completions", json=ASK, headers=KEY, timeout=60).status_code == 200
    assert httpx.post(url + "/v1/completions", json=ASK, timeout=60).status_code == 401


def test_metrics_and_the_schema_need_the_metrics_key(gateway):
    url, _ = gateway
    assert httpx.get(url + "/metrics").status_code == 401
    assert httpx.get(url + "/metrics", headers=KEY).status_code == 401
    assert httpx.get(url + "/openapi.json", headers=KEY).status_code == 401
    r = httpx.get(url + "/metrics", headers={"authorization": "Bearer metrics-secret"})
    assert r.status_code == 200 and "agentkv_replicas" in r.text


def test_sizes_are_refused_before_a_replica_sees_them(gateway):
    url, _ = gateway
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # headers only: the body never comes
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer key-a\r\n"
                  b"content-type: application/json\r\ncontent-length: 104857600\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 413")
    r = httpx.post(url + "/v1/completions", json=ASK, headers={**KEY, "x-pad": "a" * 20_000}, timeout=30)
    assert r.status_code == 431, r.text
    r = httpx.post(url + "/v1/completions", json={**ASK, "prompt": "hi " * 700}, headers=KEY, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
    many = {**ASK, "tools": [{}] * 40_000}  # over 40,000 items: past --max-body-items (32,768)
    r = httpx.post(url + "/v1/completions", json=many, headers=KEY, timeout=60)
    assert r.status_code == 413 and "--max-body-items" in r.json()["error"]["message"], r.text


def test_a_slow_body_is_cut_off(gateway):
    url, _ = gateway
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer key-a\r\n"
                  b"content-type: application/json\r\ncontent-length: 100\r\n\r\n{")
        start = time.monotonic()
        assert s.recv(4096) == b"" and time.monotonic() - start < 8
    assert httpx.post(url + "/v1/completions", json=ASK, headers=KEY, timeout=60).status_code == 200


def test_a_tenants_bytes_in_flight_are_capped_at_the_gateway(gateway):
    url, _ = gateway
    port = int(url.rsplit(":", 1)[1])
    big = json.dumps({**ASK, "user": "x" * 200_000}).encode()  # 900 kB held + 200 kB: past the 1 MB budget
    with socket.create_connection(("127.0.0.1", port), timeout=10) as held:  # tenant-a's body still arriving
        held.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer key-a\r\n"
                     b"content-type: application/json\r\ncontent-length: 900000\r\n\r\n ")
        time.sleep(0.2)  # within --body-timeout (1 s), which cuts the held body off after
        r = httpx.post(url + "/v1/completions", content=big, headers={**KEY, "content-type": "application/json"},
                       timeout=30)
        other = httpx.post(url + "/v1/completions", json=ASK, headers={"authorization": "Bearer key-b"}, timeout=60)
    assert r.status_code == 429 and r.headers["retry-after"] == "1", r.text
    assert r.json()["error"]["code"] == "tenant_bytes_in_flight", r.text
    assert other.status_code == 200, other.text  # another tenant is not affected
