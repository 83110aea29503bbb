"""How the server holds to `Limits` (limits.py), so that no client (keyed or not) can take its memory,
descriptors or event loop:

- bodies: `RequestLimits` answers 413 from the Content-Length header before a byte of the body is read, and
  counts the bytes of a chunked body as they arrive, refusing it at the limit (nothing is parsed until then);
- headers: `guarded_protocol` is uvicorn's h11 protocol with h11's incomplete-event cap (header bytes) and a
  deadline for a request's headers, armed when a connection opens and after each response, and not reset by
  the bytes that trickle in (slowloris); an idle keep-alive connection closes after `idle_timeout_s`;
- connections: at `max_connections` a new connection closes the oldest idle one (no request in progress), as
  nginx reuses keep-alive connections; if every connection is busy the new one gets a JSON 503 and is closed.
  The cap is kept below the process's descriptor limit (raised to its hard limit first), so accept() never
  fails with EMFILE and the log never fills with its tracebacks.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import uvicorn
from fastapi import Request
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from agentkv.server.errors import APIError, error_response
from agentkv.server.limits import Limits

log = logging.getLogger("agentkv.server")
WARN_EVERY_S = 10.0


class _Rare:
    """One warning per WARN_EVERY_S with how many times it happened: a flood of refusals logs a few lines."""

    def __init__(self, message: str) -> None:
        self.message, self.count, self.last = message, 0, 0.0

    def __call__(self) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= WARN_EVERY_S:
            log.warning("%s (%d since the last warning)", self.message, self.count)
            self.count, self.last = 0, now


def uvicorn_config(app: Any, limits: Limits, **kw: Any) -> uvicorn.Config:
    """uvicorn's settings for `app` under `limits` (the connection cap fitted to the descriptor limit)."""
    limits.fit_descriptors()
    return uvicorn.Config(app, http=guarded_protocol(limits), h11_max_incomplete_event_size=limits.max_header_bytes,
                          timeout_keep_alive=limits.idle_timeout_s, **kw)


def guarded_protocol(limits: Limits) -> type[H11Protocol]:
    """uvicorn's h11 protocol under `limits`."""
    body = json.dumps({"error": {"message": "server busy: too many connections; retry later", "type":
                                 "service_unavailable", "param": None, "code": "too_many_connections"}}).encode()
    busy = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"retry-after: 1\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    return type("Guarded", (_Guarded,), {
        "limits": limits, "busy": busy,
        "refused": _Rare(f"connection refused: all {limits.max_connections} connections are busy "
                         "(--max-connections)"),
        "evicted": _Rare(f"oldest idle connection closed to admit a new one ({limits.max_connections} open, "
                         "--max-connections)"),
        "timed_out": _Rare(f"connection closed: no complete request headers within {limits.header_timeout_s:g} s "
                           "(--header-timeout)")})


class _Guarded(H11Protocol):
    """The protocol's guards; `guarded_protocol` makes a subclass with its limits, its 503 and its warnings."""

    limits: Limits
    busy: bytes
    refused: _Rare
    evicted: _Rare
    timed_out: _Rare

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.opened = time.monotonic()
        self.header_deadline: Any = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections and not self._evict_idle():
            self.refused()
            transport.write(self.busy)
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:
            self._disarm()  # the headers are in: the request's own time is not bounded here

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _evict_idle(self) -> bool:
        idle = [c for c in self.connections if c is not self and isinstance(c, _Guarded) and c.idle()
                and not c.transport.is_closing()]
        if not idle:
            return False
        self.evicted()
        min(idle, key=lambda c: c.opened).shutdown()
        return True

    def _arm(self) -> None:
        self._disarm()
        self.header_deadline = self.loop.call_later(self.limits.header_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self.header_deadline is not None:
            self.header_deadline.cancel()
            self.header_deadline = None

    def _too_slow(self) -> None:
        self.header_deadline = None
        if self.idle() and not self.transport.is_closing():
            self.timed_out()
            self.transport.close()


class RequestLimits:
    """ASGI middleware: headers over `max_header_bytes` are answered 431 (h11 bounds only headers that arrive in
    pieces); a body over `max_bytes` 413, the connection closed, before it is parsed: at once by its
    Content-Length, or, chunked, when its bytes reach the limit."""

    def __init__(self, app: Any, max_bytes: int, max_header_bytes: int) -> None:
        self.app, self.max_bytes, self.max_header_bytes = app, max_bytes, max_header_bytes

    def error(self) -> APIError:
        return APIError(413, f"request body over {self.max_bytes} bytes (the server's --max-body-bytes)",
                        code="request_too_large", headers={"connection": "close"})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = len(scope.get("raw_path") or b"") + sum(len(k) + len(v) + 4 for k, v in scope["headers"])
        if size > self.max_header_bytes:
            err = APIError(431, f"request headers over {self.max_header_bytes} bytes (the server's "
                           "--max-header-bytes)", code="headers_too_large", headers={"connection": "close"})
            await error_response(Request(scope), err)(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await error_response(Request(scope), self.error())(scope, receive, send)
            return
        seen = 0

        async def bounded() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # raised inside the app, whose error handler answers it
                raise HTTPException(413, self.error().message, headers={"connection": "close"})
            return message

        await self.app(scope, bounded, send)
