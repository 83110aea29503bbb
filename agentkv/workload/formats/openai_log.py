"""OpenAI chat-completions JSONL logs: one request per line, rendered to tokens and cut into chained blocks.

A line is a request body (`{"model", "messages", "tools"?, ...}`), or a logged pair
`{"request": body, "response": {...}?, "timestamp"?}`, or an OpenAI batch line `{"body": body, ...}`.
- time: `timestamp` / `created` / `time` (seconds since the epoch, or an ISO-8601 string);
- session: `session_id` or `metadata.session_id`; without one, a request joins the session whose latest
  request (with or without its logged reply) is a prefix of its messages, as agent loops resend their history;
- tenant: `metadata.tenant` or `user`; blocks are salted by tenant, so tenants never share KV;
- output tokens: `response.usage.completion_tokens`, else the rendered reply, else `max_tokens`, else 0.
Without timestamps, the requests of a session are placed one second apart after an unknown session start.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

import numpy as np

from agentkv.kvcache.block_hash import block_hashes, salt_hash
from agentkv.workload.builder import TraceBuilder
from agentkv.workload.errors import BadRecords, TraceError, json_object
from agentkv.workload.tokenize import Tokenizer, render_message, render_pieces
from agentkv.workload.trace import FINISH_END, FINISH_TOOL, FINISH_UNKNOWN

NAME = "openai-log"
FINISH = {"tool_calls": FINISH_TOOL, "function_call": FINISH_TOOL, "stop": FINISH_END, "length": FINISH_END}


def looks_like(head: str) -> bool:
    first = head.lstrip().split("\n", 1)[0]
    return first.startswith("{") and '"messages"' in first


def load(
    paths: list[str], texts: list[str], errors: BadRecords, tokenizer: Tokenizer, block_size: int = 64
) -> TraceBuilder:
    records = []
    for path, text in zip(paths, texts, strict=True):
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append(_parse(line, path, f"line {lineno}"))
                except TraceError as e:
                    errors(e)
    records.sort(key=lambda r: (r["time"] is None, r["time"] or 0.0))
    b = TraceBuilder(block_size, source=NAME)
    sessions: dict[str, int] = {}  # explicit session key -> session
    by_prefix: dict[bytes, int] = {}  # digest of a full message list -> session whose latest request it is
    clock: dict[int, tuple[float, float]] = {}  # session -> (start, last time)
    for rec in records:
        body = rec["body"]
        digests = _prefix_digests(body["messages"], body.get("tools"))
        if rec["session"] is not None:
            sid = sessions.get(rec["session"])
        else:
            sid = next((by_prefix[d] for d in reversed(digests[:-1]) if d in by_prefix), None)
        if sid is None:
            start = float("nan") if rec["time"] is None else rec["time"]
            sid = b.add_session(rec["session"] or f"{rec['where']}", start=start, tenant=rec["tenant"],
                                scope=(NAME, "tenant", rec["tenant"]))
            clock[sid] = (start, start if rec["time"] is not None else -1.0)
            if rec["session"] is not None:
                sessions[rec["session"]] = sid
        start, last = clock[sid]
        t = rec["time"] - start if rec["time"] is not None and start == start else (last + 1.0)
        clock[sid] = (start, t)
        tokens = np.concatenate(
            [np.asarray(tokenizer.encode(p), dtype=np.int64) for p in render_pieces(body["messages"], body.get("tools"))]
            or [np.zeros(0, dtype=np.int64)]
        )
        ids = block_hashes(tokens, block_size, salt_hash(rec["tenant"]))
        reply = rec["reply"]
        n_out = rec["out"]
        if n_out is None:
            n_out = len(tokenizer.encode(render_message(reply))) if reply else int(body.get("max_tokens") or 0)
        b.add_request(sid, t, len(tokens), int(n_out), ids, finish=rec["finish"])
        by_prefix[digests[-1]] = sid
        if reply:
            by_prefix[_extend(digests[-1], reply)] = sid
    return b


def _parse(line: str, path: str, where: str) -> dict[str, Any]:
    rec = json_object(line, path, where)
    body = rec.get("request") or rec.get("body") or rec
    if not isinstance(body, dict):
        raise TraceError(path, where, "request", "expected an object")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) for m in msgs):
        raise TraceError(path, where, "messages", "missing, empty or not a list of objects")
    response = rec.get("response") or {}
    if isinstance(response, dict) and isinstance(response.get("body"), dict):
        response = response["body"]
    meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    usage = response.get("usage") if isinstance(response, dict) else None
    out = usage.get("completion_tokens") if isinstance(usage, dict) else None
    if out is not None and (not isinstance(out, int) or out < 0):
        raise TraceError(path, where, "response.usage.completion_tokens", f"expected a count, got {out!r}")
    choices = response.get("choices") if isinstance(response, dict) else None
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    reply = choice.get("message")
    session = rec.get("session_id") or body.get("session_id") or meta.get("session_id")
    return {
        "body": body,
        "time": _time(rec, body, path, where),
        "session": None if session is None else str(session),
        "tenant": str(meta.get("tenant") or body.get("user") or rec.get("user") or "default"),
        "out": out,
        "reply": reply if isinstance(reply, dict) else None,
        "finish": FINISH.get(str(choice.get("finish_reason")), FINISH_UNKNOWN),
        "where": f"{path.rsplit('/', 1)[-1]}:{where}",
    }


def _time(rec: dict[str, Any], body: dict[str, Any], path: str, where: str) -> float | None:
    for key in ("timestamp", "created", "time"):
        v = rec.get(key, body.get(key))
        if v is None:
            continue
        if isinstance(v, bool):
            break
        if isinstance(v, int | float):
            if v < 0:
                raise TraceError(path, where, key, f"must be >= 0, got {v!r}")
            return float(v)
        if isinstance(v, str):
            try:
                return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
            except ValueError:
                pass
        raise TraceError(path, where, key, f"not a timestamp: {v!r}")
    return None


def _prefix_digests(messages: list[dict[str, Any]], tools: Any) -> list[bytes]:
    """digests[j] names the message list messages[:j] (with the tools); the last names the whole list."""
    d = hashlib.blake2b(json.dumps(tools, sort_keys=True).encode(), digest_size=16).digest()
    out = [d]
    for m in messages:
        d = _extend(d, m)
        out.append(d)
    return out


def _extend(digest: bytes, message: dict[str, Any]) -> bytes:
    return hashlib.blake2b(digest + render_message(message).encode(), digest_size=16).digest()
