"""A real HTTP server on 127.0.0.1 that misbehaves on purpose: each completion request gets the next behaviour
of a cycle (a whole stream, 429, 500, garbage, a truncated or dropped stream, an error event, a stall)."""

from __future__ import annotations

import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BEHAVIOURS = ("ok", "429", "500", "garbage", "bad_event", "truncated", "drop", "stream_error", "plain", "stall")
# what the replay must call each behaviour ("" = a whole reply)
EXPECTED = {"ok": "", "plain": "", "429": "http_429", "500": "http_500", "garbage": "bad_json",
            "bad_event": "bad_json", "truncated": "truncated", "drop": "disconnected",
            "stream_error": "stream_error", "stall": "timeout"}


class Stub:
    def __init__(self, behaviours: tuple[str, ...] = BEHAVIOURS, delay: float = 0.0, stall: float = 2.0,
                 tokenize: bool = True, unknown_words: bool = False, key: str = "",
                 max_model_len: int | None = None) -> None:
        self.cycle = itertools.cycle(behaviours)
        self.lock = threading.Lock()
        self.delay, self.stall, self.tokenize = delay, stall, tokenize
        self.unknown_words = unknown_words  # /tokenize maps every word to one id, as a word-level [UNK] would
        self.vocab: dict[str, int] = {}  # a word-level tokenizer: one id per distinct word
        self.served: list[str] = []
        self.prompts: list[str] = []  # every replayed prompt, in arrival order
        self.key, self.max_model_len = key, max_model_len  # a key the server requires; its listed window
        self.active = self.most_active = 0  # completion requests inside their delay now, and the most at once
        stub = self

        class Handler(_Handler):
            owner = stub

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # clients that hung up (stalls) are expected
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def next(self) -> str:
        with self.lock:
            b = next(self.cycle)
            self.served.append(b)
            return b

    def __enter__(self) -> Stub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    owner: Stub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _refused(self) -> bool:
        """A 401 unless the request carries the stub's key (when it has one)."""
        if self.owner.key and self.headers.get("authorization") != f"Bearer {self.owner.key}":
            self._json(401, {"error": {"message": "invalid api key"}})
            return True
        return False

    def do_GET(self) -> None:
        if self._refused():
            return
        if self.path == "/v1/models":
            window = {"max_model_len": self.owner.max_model_len} if self.owner.max_model_len else {}
            self._json(200, {"object": "list", "data": [{"id": "stub-model", "object": "model", **window}]})
        else:
            self._json(404, {"error": {"message": "not found"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        prompt_tokens = len(body.get("prompt", "").split()) + 1  # the words, and a BOS
        if self._refused():
            return
        limit = self.owner.max_model_len
        if limit and prompt_tokens + body.get("max_tokens", 0) > limit:
            self._json(400, {"error": {"message": f"maximum context length is {limit} tokens"}})
            return
        if self.path == "/tokenize":
            if self.owner.tokenize:
                words = body.get("prompt", "").split()
                with self.owner.lock:
                    vocab = self.owner.vocab
                    ids = [0] + [3 if self.owner.unknown_words else vocab.setdefault(w, 10 + len(vocab)) for w in words]
                self._json(200, {"count": prompt_tokens, "tokens": ids})
            else:
                self._json(404, {"error": {"message": "not found"}})
            return
        if body["max_tokens"] == 1:  # a calibration probe
            self._plain(prompt_tokens, 1)
            return
        stub = self.owner
        with stub.lock:
            stub.prompts.append(body["prompt"])
            stub.active += 1
            stub.most_active = max(stub.most_active, stub.active)
        time.sleep(stub.delay)
        with stub.lock:  # before answering: once the answer is out, the client may send its next request at once
            stub.active -= 1
        getattr(self, "_" + stub.next())(prompt_tokens, body["max_tokens"])

    # ---- behaviours ---------------------------------------------------------------------------------------
    def _ok(self, p: int, n: int) -> None:
        self._sse_head()
        for _ in range(n):
            self._event({"choices": [{"index": 0, "text": " tok"}]})
        self._event({"choices": [], "usage": _usage(p, n)})
        self._send(b"data: [DONE]\n\n")
        self.close_connection = True

    def _plain(self, p: int, n: int) -> None:
        self._json(200, {"choices": [{"index": 0, "text": "x" * n}], "usage": _usage(p, n)})

    def _429(self, p: int, n: int) -> None:
        self._json(429, {"error": {"message": "queue full"}}, {"Retry-After": "1"})

    def _500(self, p: int, n: int) -> None:
        self._json(500, {"error": {"message": "internal"}})

    def _garbage(self, p: int, n: int) -> None:
        self._raw(200, b"<html>upstream gateway says hi</html>", "application/json")

    def _bad_event(self, p: int, n: int) -> None:
        self._sse_head()
        self._event({"choices": [{"index": 0, "text": " a"}]})
        self._send(b"data: {\"choices\": [{\"text\n\n")
        self.close_connection = True

    def _truncated(self, p: int, n: int) -> None:
        self._sse_head()
        self._event({"choices": [{"index": 0, "text": " a"}]})
        self.close_connection = True  # the body ends cleanly, but without [DONE]

    def _drop(self, p: int, n: int) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        chunk = b'data: {"choices": [{"index": 0, "text": " a"}]}\n\n'
        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.write(b"400\r\npartial")  # a chunk promised and never finished
        self.wfile.flush()
        self.close_connection = True

    def _stream_error(self, p: int, n: int) -> None:
        self._sse_head()
        self._event({"error": {"message": "engine died", "type": "internal_error"}})
        self._send(b"data: [DONE]\n\n")
        self.close_connection = True

    def _stall(self, p: int, n: int) -> None:
        time.sleep(self.owner.stall)
        self._plain(p, n)

    # ---- plumbing -----------------------------------------------------------------------------------------
    def _sse_head(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("connection", "close")
        self.end_headers()

    def _event(self, obj: dict) -> None:
        self._send(b"data: " + json.dumps(obj).encode() + b"\n\n")

    def _send(self, data: bytes) -> None:
        self.wfile.write(data)
        self.wfile.flush()

    def _json(self, code: int, obj: dict, headers: dict[str, str] | None = None) -> None:
        self._raw(code, json.dumps(obj).encode(), "application/json", headers)

    def _raw(self, code: int, data: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self._send(data)


def _usage(p: int, n: int) -> dict:
    return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n,
            "prompt_tokens_details": {"cached_tokens": 0}}
