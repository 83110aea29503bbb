"""What the break test of issue 22 sent, each answered as a public server must: out-of-range numbers and lone
surrogates are 400 (and the next request succeeds), a 100 MB body is 413 before it is read, 2,000 idle
connections leave room for a canary and no traceback in the log, slow headers are cut off, the schema and
metrics need the metrics key, and an engine loop that fails says so on /health and ends the process."""

from __future__ import annotations

import json
import select
import socket
import threading
import time

import httpx
import pytest

from agentkv.cli import build_parser

COMPLETION = {"model": "tiny", "prompt": "hi", "max_tokens": 5, "temperature": 0.5}


def ok(url: str) -> None:
    r = httpx.post(url + "/v1/completions", json={**COMPLETION, "seed": 7}, timeout=30)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1, r.text


@pytest.mark.parametrize("field", [{"seed": 2**64}, {"seed": -(2**63) - 1}, {"top_k": 2**63}, {"max_tokens": 2**63}])
def test_out_of_range_numbers_are_400_and_the_next_request_succeeds(server, field):
    r = httpx.post(server.url + "/v1/completions", json={**COMPLETION, **field}, timeout=30)
    name = next(iter(field))
    assert r.status_code == 400 and r.json()["error"]["param"] == name, r.text
    ok(server.url)
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


def test_nan_and_too_many_stop_strings_are_400(server):
    body = json.dumps(COMPLETION).replace('"temperature": 0.5', '"temperature": NaN')
    r = httpx.post(server.url + "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature", r.text
    r = httpx.post(server.url + "/v1/completions", json={**COMPLETION, "stop": ["x"] * 65})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("stop"), r.text
    r = httpx.post(server.url + "/v1/messages", json={"model": "tiny", "max_tokens": 4, "stop_sequences": ["x" * 1025],
                                                     "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "1024 characters" in r.text, r.text


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": "a \\ud800 b"}]}'),
    ("/v1/completions", '{"model": "tiny", "prompt": "\\udfff"}'),
    ("/v1/messages", '{"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "\\ud800"}]}'),
    ("/v1/messages/count_tokens", '{"model": "tiny", "messages": [{"role": "user", "content": "x"}], '
                                  '"system": "\\ud800"}'),
    ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": '
                             '"function", "function": {"name": "f", "parameters": {"\\ud800": 1}}}]}'),
])
def test_a_lone_surrogate_is_400_naming_the_field(server, path, body):
    r = httpx.post(server.url + path, content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert "lone surrogate" in json.dumps(r.json())
    ok(server.url)


def test_the_schema_documents_400_not_422(server):
    schema = httpx.get(server.url + "/openapi.json").json()
    statuses = {s for path in schema["paths"].values() for op in path.values() for s in op["responses"]}
    assert "422" not in statuses and "400" in statuses


def test_a_prompt_over_the_character_limit_is_400_before_tokenizing(start, plain_dir):
    srv = start("--model", str(plain_dir), "--served-model-name", "tiny", "--kv-cache-gb", "0.01",
                "--max-prompt-chars", "100")
    r = httpx.post(srv.url + "/v1/completions", json={**COMPLETION, "prompt": "x" * 101})
    assert r.status_code == 400 and "101 characters" in r.json()["error"]["message"]
    r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "tiny", "messages": [
        {"role": "system", "content": "y" * 60}, {"role": "user", "content": "z" * 60}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    ok(srv.url)


def test_metrics_schema_and_docs_need_the_metrics_key(start, plain_dir, tmp_path):
    (tmp_path / "keys").write_text("sk-acme acme\n")
    (tmp_path / "metrics").write_text("mk-ops\n")
    srv = start("--model", str(plain_dir), "--served-model-name", "tiny", "--kv-cache-gb", "0.01",
                "--api-keys", str(tmp_path / "keys"), "--metrics-key-file", str(tmp_path / "metrics"))
    for path in ("/metrics", "/openapi.json", "/docs"):
        assert httpx.get(srv.url + path).status_code == 401
        assert httpx.get(srv.url + path, headers={"authorization": "Bearer sk-acme"}).status_code == 401
        assert httpx.get(srv.url + path, headers={"authorization": "Bearer mk-ops"}).status_code == 200
    assert httpx.get(srv.url + "/health").status_code == 200  # a supervisor's probe needs no key


def test_with_keys_and_no_metrics_key_only_loopback_reads_metrics(start, plain_dir, tmp_path):
    from starlette.requests import Request

    from agentkv.server.errors import APIError

    (tmp_path / "keys").write_text("sk-acme acme\n")
    srv = start("--model", str(plain_dir), "--served-model-name", "tiny", "--kv-cache-gb", "0.01",
                "--api-keys", str(tmp_path / "keys"))
    assert httpx.get(srv.url + "/metrics").status_code == 200  # this test is a loopback client
    server = srv.app.state.server
    for host in ("10.1.2.3", "2001:db8::1", "testclient"):
        far = Request({"type": "http", "headers": [(b"authorization", b"Bearer sk-acme")], "client": (host, 5)})
        with pytest.raises(APIError, match="loopback clients only"):
            server.admin(far)
    server.admin(Request({"type": "http", "headers": [], "client": ("::1", 5)}))


def test_an_engine_loop_failure_shows_on_health(start, plain_dir):
    srv = start("--model", str(plain_dir), "--served-model-name", "tiny", "--kv-cache-gb", "0.01")

    def broken() -> list:
        raise RuntimeError("injected fault")

    srv.engine.llm.step = broken  # the one way to make a healthy engine fail from outside
    r = httpx.post(srv.url + "/v1/completions", json=COMPLETION, timeout=30)
    assert r.status_code == 503
    r = httpx.get(srv.url + "/health")
    assert r.status_code == 503 and r.json() == {"status": "error", "error": "the engine failed: injected fault"}


def test_an_engine_loop_failure_ends_serve_with_status_1(plain_dir, capsys):
    from agentkv.server.serve import build, run

    args = build_parser().parse_args(["serve", "--model", str(plain_dir), "--served-model-name", "tiny",
                                      "--kv-cache-gb", "0.01", "--log-level", "error"])
    app = build(args)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(run(app, args, sockets=[sock])), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            assert time.monotonic() < deadline
            time.sleep(0.05)

    def broken() -> list:
        raise RuntimeError("injected fault")

    app.state.server.engine.llm.step = broken
    httpx.post(url + "/v1/completions", json=COMPLETION, timeout=30)
    thread.join(30)
    assert status == [1]
    assert "the engine loop failed (RuntimeError: injected fault); exiting" in capsys.readouterr().err


# ---- the process, seen from outside: memory, descriptors, the log ---------------------------------------
@pytest.fixture(scope="module")
def guarded(spawn, plain_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("hostile") / "serve.log"
    srv = spawn("--model", str(plain_dir), "--served-model-name", "tiny", "--kv-cache-gb", "0.01",
                "--max-body-bytes", str(1 << 20), "--header-timeout", "2", "--max-header-bytes", "8192",
                log=log, nofile=1024)
    srv.log = log
    return srv


def raw(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    return s


def status_of(s: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        assert chunk, "closed before a status line"
        data += chunk
    return int(data.split()[1])


def test_a_100_mb_body_is_413_before_it_is_read(guarded):
    rss = guarded.rss_mib()
    s = raw(guarded.port)  # by its Content-Length: answered before a byte of the body is sent
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              b"content-length: 104857600\r\n\r\n")
    assert status_of(s) == 413
    s.close()
    s = raw(guarded.port)  # chunked: refused once its bytes pass the limit, the rest never read
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
              b"transfer-encoding: chunked\r\n\r\n")
    piece = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
    sent, answered = 0, None
    try:
        while sent < 100 and answered is None:
            s.sendall(piece)
            sent += 1
            if select.select([s], [], [], 0)[0]:
                answered = status_of(s)
        if answered is None:
            answered = status_of(s)
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.close()
    assert answered in (413, None) and sent < 100, (answered, sent)  # the server stopped reading long before
    assert guarded.rss_mib() - rss < 50
    ok(guarded.url)


def test_two_thousand_idle_connections_leave_room_for_a_canary(guarded):
    idle = []
    for _ in range(2000):
        try:
            idle.append(socket.create_connection(("127.0.0.1", guarded.port), timeout=10))
        except OSError:
            break
    assert len(idle) == 2000
    t0 = time.monotonic()
    ok(guarded.url)
    assert time.monotonic() - t0 < 10
    for s in idle:
        s.close()
    log = guarded.log.read_text()
    assert "Traceback" not in log and "Too many open files" not in log
    assert log.count("oldest idle connection closed") <= 3  # a few summary lines, not one per connection


def test_slow_headers_are_cut_off_and_huge_headers_refused(guarded):
    s = raw(guarded.port)
    t0 = time.monotonic()
    closed = False
    for byte in b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 200:
        try:
            s.send(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        if select.select([s], [], [], 0.1)[0] and s.recv(1) == b"":
            closed = True
            break
    assert closed and time.monotonic() - t0 < 6
    s = raw(guarded.port)
    s.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * 20000 + b"\r\n\r\n")
    assert status_of(s) == 431
    assert "Traceback" not in guarded.log.read_text()
    ok(guarded.url)
