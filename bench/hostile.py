"""The break test of issue 22 in one bounded run against `agentkv serve` on 127.0.0.1 (nothing leaves loopback):
each attack's HTTP status, how long the answer took, the server's RSS change, and whether a request right
after it still succeeds. The baseline, measured in the same run, is a running stream's largest gap between
tokens with nobody attacking; the same stream's gap is measured during the 10 MB prompt (as a ratio to it),
and while requests with new prefixes arrive with the Redis tier stopped (SIGSTOP), as a ratio to the same
traffic with Redis running.

The attacks of issue 32 (names start with "#32"; `--only "#32"` runs just them) add: /v1/responses bodies
with a lone surrogate and a NaN effort, JSON nested past the stack (a tool schema 480 deep, tool-call
arguments 5,000 deep), a template global as a chat_template_kwarg, logit_bias
(applied or ignored), best_of, a legal 8 MB body of 200k messages (a running stream's largest gap), three
clients sending legal 8 MB bodies (200k messages, a 4M-token prompt, 150k tools) in turn while a stream runs,
one tenant holding 64 MiB of bodies in flight (its 9th request, and another tenant's), and 2,100
slow-body connections, past the default --max-connections (does a new client get in?). The bench model's
word-level tokenizer is not one llguidance reads, so forced tools, the grammar cache and 2k-property compiles
are shown by the tests (tests/server/test_breaks.py, tests/engine/test_grammar.py,
tests/server/test_floods.py), not here.

    python -m bench.hostile [--idle 2000] [--sessions 500] [--only TEXT]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench._common import machine
from bench.replay_serve import write_model

KEY, OTHER = "sk-bench", "sk-other"  # two tenants
SLOW_BODIES = 2100  # more than the server's default --max-connections (2,048)
# a chat template that calls one of jinja's functions (Qwen3's uses namespace() so)
TEMPLATE = ("{%- set ns = namespace(n=0) %}{%- for m in messages %}{%- set ns.n = ns.n + 1 %}{{ m['role'] }} "
            "{{ m['content'] }} {% endfor %}{%- if tools %}{{ tools | tojson }}{% endif %}assistant")
HEAD = {"authorization": f"Bearer {KEY}"}


class Serve:
    """`agentkv serve` in its own process with API keys, a metrics key and a Redis tier; its log kept."""

    def __init__(self, folder: Path, model: Path, redis_url: str | None) -> None:
        (folder / "keys").write_text(f"{KEY} bench\n{OTHER} other\n")
        (folder / "metrics").write_text("mk-bench\n")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "serve.log"
        tiers = ["--kv-tiers", f"redis=64MiB@{redis_url}"] if redis_url else []
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "agentkv.cli", "serve", "--model", str(model), "--port", str(self.port),
                 "--served-model-name", "m", "--kv-cache-gb", "0.02", "--log-level", "warning", "--api-keys",
                 str(folder / "keys"), "--metrics-key-file", str(folder / "metrics"), *tiers],
                stdout=out, stderr=out)
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"agentkv serve did not start:\n{self.log.read_text()[-2000:]}") from None
                time.sleep(0.2)

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def post(url: str, path: str, body: dict | bytes, **kw) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url + path, content=content, headers={**HEAD, "content-type": "application/json"},
                      timeout=120, **kw)


def canary(url: str) -> int:
    return post(url, "/v1/completions", {"model": "m", "prompt": "hello world", "max_tokens": 2}).status_code


class Stream:
    """A streamed completion in a thread, recording the gap before each token."""

    def __init__(self, url: str, tokens: int = 400) -> None:
        self.gaps: list[float] = []
        body = {"model": "m", "prompt": "the agent reads a file", "max_tokens": tokens, "ignore_eos": True,
                "stream": True, "temperature": 0}
        self.thread = threading.Thread(target=self._run, args=(url, body), daemon=True)
        self.started = threading.Event()
        self.thread.start()
        self.started.wait(60)

    def _run(self, url: str, body: dict) -> None:
        with httpx.stream("POST", url + "/v1/completions", json=body, headers=HEAD, timeout=300) as r:
            last = time.monotonic()
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    now = time.monotonic()
                    self.gaps.append(now - last)
                    last = now
                    self.started.set()

    def max_gap(self) -> float:
        self.thread.join(300)
        return max(self.gaps[1:], default=float("nan"))


def raw(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def status_line(s: socket.socket) -> int | None:
    data = b""
    while b"\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            return None
        data += chunk
    return int(data.split()[1])


# ---- the attacks: each returns (status, detail) --------------------------------------------------------
def big_body_declared(srv: Serve) -> tuple[object, str]:
    s = raw(srv.port)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + KEY.encode()
              + b"\r\ncontent-type: application/json\r\ncontent-length: 104857600\r\n\r\n")
    code = status_line(s)
    s.close()
    return code, "answered from Content-Length, before the body"


def big_body_chunked(srv: Serve) -> tuple[object, str]:
    s = raw(srv.port)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + KEY.encode()
              + b"\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
    piece, sent, code = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20)), 0, None
    try:
        while sent < 100 and code is None:
            s.sendall(piece)
            sent += 1
            if select.select([s], [], [], 0)[0]:
                code = status_line(s)
        code = code or status_line(s)
    except (BrokenPipeError, ConnectionResetError):
        pass
    s.close()
    return code or "413 or reset", (f"{sent} MiB of 100 sent before the server stopped reading" +
                                    ("" if code else " (its close reset the connection before the 413 was read)"))


def long_prompt(srv: Serve, mb: int) -> tuple[object, str]:
    stream = Stream(srv.url)
    t0 = time.monotonic()
    r = post(srv.url, "/v1/completions", {"model": "m", "prompt": "the agent " * (mb * 100_000), "max_tokens": 2})
    took = time.monotonic() - t0
    return r.status_code, f"answered in {took:.2f} s; a running stream's largest gap {stream.max_gap():.3f} s"


def idle_connections(srv: Serve, n: int) -> tuple[object, str]:
    code, took, held = held_while_canary(srv, n, b"")
    return code, f"{held} held; the canary answered in {took:.3f} s"


def held_while_canary(srv: Serve, n: int, first: bytes) -> tuple[object, float, int]:
    """Up to `n` connections opened (each sending `first`), then a canary: (its status or error, its seconds,
    how many were held)."""
    held = []
    for _ in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            if first:
                s.sendall(first)
            held.append(s)
        except OSError:
            break
    time.sleep(0.5 if first else 0)
    t0 = time.monotonic()
    try:
        code: object = canary(srv.url)
    except httpx.TransportError as e:
        code = type(e).__name__
    took = time.monotonic() - t0
    for s in held:
        s.close()
    return code, took, len(held)


def slow_headers(srv: Serve) -> tuple[object, str]:
    s = raw(srv.port)
    t0 = time.monotonic()
    for byte in b"GET /health HTTP/1.1\r\nhost: x\r\nx-slow: " + b"a" * 10_000:
        try:
            s.send(bytes([byte]))
        except OSError:
            break
        if select.select([s], [], [], 0.2)[0] and s.recv(1) == b"":
            break
    s.close()
    return "closed", f"after {time.monotonic() - t0:.1f} s of one byte per 0.2 s"


def many_sessions(srv: Serve, n: int) -> tuple[object, str]:
    codes: dict[int, int] = {}

    def one(i: int) -> None:
        r = httpx.post(srv.url + "/v1/completions", json={"model": "m", "prompt": "hi", "max_tokens": 1},
                       headers={**HEAD, "x-session-id": f"session-{i}-" + "x" * 4000}, timeout=120)
        codes[r.status_code] = codes.get(r.status_code, 0) + 1

    for lo in range(0, n, 32):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(lo, min(n, lo + 32))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return ",".join(f"{k}x{v}" for k, v in sorted(codes.items())), f"{n} distinct 4 KB session ids"


def redis_traffic(srv: Serve, redis: subprocess.Popen, stop: bool) -> tuple[float, float]:
    """A running stream while 8 requests with a new prefix arrive (each admission asks Redis), with the Redis
    server stopped (SIGSTOP) or not: (seconds the 8 took, the stream's largest gap between tokens)."""
    stream = Stream(srv.url)
    if stop:
        redis.send_signal(signal.SIGSTOP)
    t0 = time.monotonic()
    try:
        for i in range(8):
            post(srv.url, "/v1/completions", {"model": "m", "prompt": f"new prefix {i} " * 40, "max_tokens": 2})
    finally:
        took = time.monotonic() - t0
        if stop:
            redis.send_signal(signal.SIGCONT)
    return took, stream.max_gap()


def stopped_redis(srv: Serve, redis: subprocess.Popen) -> tuple[object, str]:
    running = redis_traffic(srv, redis, stop=False)
    stopped = redis_traffic(srv, redis, stop=True)
    return canary(srv.url), (f"8 requests in {stopped[0]:.2f} s, the stream's largest gap {stopped[1]:.3f} s; "
                             f"the same traffic with Redis running: {running[0]:.2f} s, {running[1]:.3f} s "
                             f"({stopped[1] / running[1]:.1f}x)")


# ---- issue 32 --------------------------------------------------------------------------------------------
def _chat(url: str, extra: dict | bytes | None = None) -> httpx.Response:
    body = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    return post(url, "/v1/chat/completions", {**body, **(extra or {})})


def _nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


def deep_schema(srv: Serve) -> tuple[object, str]:
    body = ('{"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": '
            '"function", "function": {"name": "f", "parameters": ' + _nested(480) + "}}]}")
    return post(srv.url, "/v1/chat/completions", body.encode()).status_code, "2.9 KB"


def deep_arguments(srv: Serve) -> tuple[object, str]:
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": _nested(5000)}}
    r = _chat(srv.url, {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}]})
    return r.status_code, ""


def logit_bias(srv: Serve) -> tuple[object, str]:
    r = post(srv.url, "/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 6, "temperature": 0,
                                          "ignore_eos": True, "logit_bias": {"7": 100}, "return_token_ids": True})
    ids = r.json()["choices"][0]["token_ids"] if r.status_code == 200 else []
    return r.status_code, "applied" if ids == [7] * 6 else f"ignored (tokens {ids})"


def large_legal_body(srv: Serve) -> tuple[object, str]:
    stream = Stream(srv.url, tokens=2000)
    msgs = [{"role": "user", "content": "a"}] * 200_000
    t0 = time.monotonic()
    r = _chat(srv.url, {"messages": msgs})
    took = time.monotonic() - t0
    return r.status_code, f"answered in {took:.2f} s; a running stream's largest gap {stream.max_gap():.3f} s"


def slow_bodies(srv: Serve, n: int) -> tuple[object, str]:
    head = (b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + KEY.encode()
            + b"\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{")
    code, took, held = held_while_canary(srv, n, head)
    return code, f"{held} connections each sent 1 body byte of 100; a new client answered in {took:.3f} s"


def flood_bodies(model: str = "m") -> list[tuple[str, str, bytes]]:
    """Legal 8 MB bodies (under the 8 MiB limit), each holding hundreds of thousands of JSON items in one
    field: (path, that field, body)."""
    def compact(body: dict) -> bytes:
        return json.dumps({"model": model, "max_tokens": 4, **body}, separators=(",", ":")).encode()

    one = [{"role": "user", "content": "a"}]
    return [("/v1/chat/completions", "messages", compact({"messages": one * 200_000})),
            ("/v1/completions", "prompt", compact({"prompt": [5] * 4_000_000})),
            ("/v1/messages", "tools", compact({"messages": one, "tools": [{"name": "f", "input_schema": {}}] * 150_000}))]


def large_body_flood(srv: Serve, clients: int = 3) -> tuple[object, str]:
    """`clients` threads sending the three 8 MB bodies in turn while a stream runs."""
    bodies, codes = flood_bodies(), []
    stream = Stream(srv.url, tokens=2000)

    def flood() -> None:
        while stream.thread.is_alive():
            codes.extend(post(srv.url, path, body).status_code for path, _, body in bodies)

    threads = [threading.Thread(target=flood) for _ in range(clients)]
    for t in threads:
        t.start()
    gap = stream.max_gap()
    for t in threads:
        t.join()
    answered = ",".join(f"{c}x{codes.count(c)}" for c in sorted(set(codes)))
    return answered, f"{len(codes)} bodies from {clients} clients; a running stream's largest gap {gap:.3f} s"


def tenant_bytes(srv: Serve) -> tuple[object, str]:
    """One tenant holds 8 bodies of 8 MiB arriving (its default budget, 64 MiB), then sends a 9th; another
    tenant sends one."""
    head = (b"POST /v1/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer " + KEY.encode()
            + b"\r\ncontent-type: application/json\r\ncontent-length: " + str(8 << 20).encode() + b"\r\n\r\n{")
    held = [raw(srv.port) for _ in range(8)]
    for s in held:
        s.sendall(head)
    time.sleep(0.5)
    body = {"model": "m", "prompt": "hello world", "max_tokens": 2}
    mine = post(srv.url, "/v1/completions", body)
    other = httpx.post(srv.url + "/v1/completions", json=body, headers={"authorization": f"Bearer {OTHER}"})
    for s in held:
        s.close()
    return mine.status_code, (f"its 9th request {mine.status_code} (Retry-After {mine.headers.get('retry-after')});"
                              f" the other tenant's {other.status_code}")


def issue32(srv: Serve) -> list[tuple[str, object]]:
    return [
        ("#32 /v1/responses lone surrogate", lambda: (post(srv.url, "/v1/responses", b'{"model": "m", "input": '
                                                           b'"\\ud800"}').status_code, "")),
        ("#32 /v1/responses effort NaN", lambda: (post(srv.url, "/v1/responses", b'{"model": "m", "input": "hi", '
                                                       b'"reasoning": {"effort": NaN}}').status_code, "")),
        ("#32 tool schema nested 480 deep", lambda: deep_schema(srv)),
        ("#32 tool-call arguments nested 5,000 deep", lambda: deep_arguments(srv)),
        ("#32 chat_template_kwargs {namespace: 1}", lambda: (_chat(srv.url, {"chat_template_kwargs": {
            "namespace": 1}}).status_code, "")),
        ("#32 logit_bias {7: +100}", lambda: logit_bias(srv)),
        ("#32 best_of 2", lambda: (post(srv.url, "/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 2,
                                                                   "best_of": 2}).status_code, "")),
        ("#32 8 MB body of 200k messages", lambda: large_legal_body(srv)),
        ("#32 8 MB bodies from 3 clients", lambda: large_body_flood(srv)),
        ("#32 a tenant's 64 MiB in flight", lambda: tenant_bytes(srv)),
        (f"#32 {SLOW_BODIES} slow bodies", lambda: slow_bodies(srv, SLOW_BODIES)),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--idle", type=int, default=2000, help="idle connections to hold (default 2000)")
    ap.add_argument("--sessions", type=int, default=500, help="distinct session ids to send (default 500)")
    ap.add_argument("--only", help="run only the attacks whose name contains this text")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="agentkv-hostile-"))
    redis = None
    if shutil.which("redis-server"):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            rport = s.getsockname()[1]
        redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
    model = write_model(folder / "model", layers=2, hidden=128, max_len=8192)
    config = json.loads((model / "tokenizer_config.json").read_text())
    (model / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    srv = Serve(folder, model, f"redis://127.0.0.1:{rport}" if redis else None)
    print(f"agentkv serve on {srv.url} ({machine()}); RSS {srv.rss_mib():.0f} MiB at start")
    base = Stream(srv.url).max_gap()
    print(f"baseline: a streamed 400-token completion's largest gap between tokens, nobody attacking: {base:.3f} s")
    attacks = [
        ("seed 2^64", lambda: (post(srv.url, "/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 5,
                                                                 "temperature": 0.5, "seed": 2**64}).status_code, "")),
        ("top_k 2^63", lambda: (post(srv.url, "/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 5,
                                                                  "top_k": 2**63}).status_code, "")),
        ("lone surrogate", lambda: (post(srv.url, "/v1/chat/completions", b'{"model": "m", "messages": [{"role": '
                                         b'"user", "content": "\\ud800"}]}').status_code, "")),
        ("100 MB body, Content-Length", lambda: big_body_declared(srv)),
        ("100 MB body, chunked", lambda: big_body_chunked(srv)),
        ("10 MB prompt", lambda: long_prompt(srv, 10)),
        ("4 MB prompt", lambda: long_prompt(srv, 4)),
        (f"{args.idle} idle connections", lambda: idle_connections(srv, args.idle)),
        ("slow headers", lambda: slow_headers(srv)),
        ("/metrics with a tenant key", lambda: (httpx.get(srv.url + "/metrics", headers=HEAD).status_code, "")),
        (f"{args.sessions} session ids", lambda: many_sessions(srv, args.sessions)),
    ]
    if redis is not None:
        attacks.append(("Redis stopped (SIGSTOP)", lambda: stopped_redis(srv, redis)))
    attacks += issue32(srv)
    print("| attack | status | time (s) | RSS change (MiB) | next request | detail |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, attack in attacks:
        if args.only and args.only not in name:
            continue
        rss, t0 = srv.rss_mib(), time.monotonic()
        code, detail = attack()
        took, grown = time.monotonic() - t0, srv.rss_mib() - rss
        if detail.endswith(" s") and "largest gap" in detail:
            detail += f" ({float(detail.split()[-2]) / base:.1f}x the baseline)"
        print(f"| {name} | {code} | {took:.2f} | {grown:+.1f} | {canary(srv.url)} | {detail} |", flush=True)
    log = srv.log.read_text()
    print(f"server log: {len(log.splitlines())} lines, {log.count('Traceback')} tracebacks; "
          f"RSS {srv.rss_mib():.0f} MiB at the end; /health {httpx.get(srv.url + '/health').json()}")
    srv.stop()
    if redis is not None:
        redis.kill()
    shutil.rmtree(folder, ignore_errors=True)
    os._exit(0)


if __name__ == "__main__":
    main()
