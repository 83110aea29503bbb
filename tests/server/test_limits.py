"""The connection guard on its own, in uvicorn on 127.0.0.1 over a minimal ASGI app: at the cap a new connection
closes the oldest idle one, else the one reading its body the longest; if every connection's request is being
served, the new one gets a JSON 503 and is closed; a body that does not arrive within --body-timeout is cut."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest
import uvicorn

from agentkv.server.guards import uvicorn_config
from agentkv.server.limits import Limits


async def echo(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    if scope["path"] == "/slow":  # a request being served (the model working on it)
        await asyncio.sleep(1.0)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def guard():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    limits = Limits(max_connections=3, header_timeout_s=30, body_timeout_s=1.5)
    server = uvicorn.Server(uvicorn_config(echo, limits, log_level="error"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield sock.getsockname()[1]
    server.should_exit = True
    thread.join(10)


def reply(port: int, request: bytes = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(4096):
            data += chunk
            if data.endswith((b"ok", b"}}")):
                break
        return data


def test_at_the_cap_the_oldest_idle_connection_makes_room(guard):
    idle = [socket.create_connection(("127.0.0.1", guard)) for _ in range(3)]
    time.sleep(0.2)
    assert reply(guard).startswith(b"HTTP/1.1 200")
    idle[0].settimeout(5)
    assert idle[0].recv(1) == b""  # the oldest was closed to admit it
    for s in idle:
        s.close()


def test_when_every_connection_is_served_a_new_one_gets_a_json_503(guard):
    busy = []
    for _ in range(3):  # each has sent its whole request, which the app is working on
        s = socket.create_connection(("127.0.0.1", guard))
        s.sendall(b"POST /slow HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n0123456789")
        busy.append(s)
    time.sleep(0.2)
    data = reply(guard)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in head
    assert json.loads(body)["error"]["code"] == "too_many_connections"
    busy[0].settimeout(5)
    assert busy[0].recv(4096).startswith(b"HTTP/1.1 200")  # the busy ones are served all the same
    for s in busy:
        s.close()


def _slow_body(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n0")  # and no more
    s.settimeout(5)
    return s


def test_at_the_cap_the_slowest_body_makes_room(guard):
    slow = []
    for _ in range(3):
        slow.append(_slow_body(guard))
        time.sleep(0.05)
    assert reply(guard).startswith(b"HTTP/1.1 200")
    assert slow[0].recv(1) == b""  # the one reading its body the longest was closed
    for s in slow:
        s.close()


def test_a_body_that_does_not_arrive_in_time_is_cut_off(guard):
    s = _slow_body(guard)
    start = time.monotonic()
    for _ in range(3):  # a byte now and then (4 of its 10) does not keep it open
        time.sleep(0.3)
        s.sendall(b"1")
    assert s.recv(1) == b"" and 1.4 < time.monotonic() - start < 4
    s.close()
