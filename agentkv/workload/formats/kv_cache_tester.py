"""kv-cache-tester session JSON (github.com/callanjfox/kv-cache-tester): one session per file.

`hash_ids` are local to a session ("hash_id_scope": "local"), so every session, and every sub-agent inside
it, gets its own id scope: a sub-agent starts with a fresh cache. A `subagent` request becomes its own
session linked to its parent; its requests' times are placed on the parent's clock.
"""

from __future__ import annotations

import json
from typing import Any

from agentkv.workload.builder import TraceBuilder
from agentkv.workload.errors import BadRecords, TraceError, require_block_ids, require_number
from agentkv.workload.trace import FINISH_END, FINISH_TOOL, FINISH_UNKNOWN

NAME = "kv-cache-tester"
STOP = {"tool_use": FINISH_TOOL, "end_turn": FINISH_END, "stop_sequence": FINISH_END, "max_tokens": FINISH_END}


def looks_like(head: str) -> bool:
    h = head.lstrip()
    return h.startswith("{") and '"requests"' in h and ('"block_size"' in h or '"hash_id_scope"' in h)


def load(paths: list[str], texts: list[str], errors: BadRecords) -> TraceBuilder:
    builder: TraceBuilder | None = None
    for path, text in zip(paths, texts, strict=True):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            errors(TraceError(path, f"{e.lineno}:{e.colno}", None, f"invalid JSON: {e.msg}"))
            continue
        if not isinstance(doc, dict):
            errors(TraceError(path, "", None, "expected a JSON object"))
            continue
        try:
            bs = int(require_number(doc, "block_size", path, "", integer=True) or 0)
            if bs == 0:
                raise TraceError(path, "", "block_size", "must be > 0")
            if not isinstance(doc.get("requests"), list):
                raise TraceError(path, "", "requests", "missing or not a list")
            scope = doc.get("hash_id_scope", "local")
            if scope not in ("local", "global"):
                raise TraceError(path, "", "hash_id_scope", f"expected 'local' or 'global', got {scope!r}")
        except TraceError as e:
            errors(e)
            continue
        if builder is None:
            builder = TraceBuilder(bs, source=NAME)
        elif builder.block_size != bs:
            errors(TraceError(path, "", "block_size", f"{bs} differs from {builder.block_size} of earlier files"))
            continue
        name = str(doc.get("id") or path.rsplit("/", 1)[-1])
        global_scope = ("global", NAME) if scope == "global" else None
        sid = builder.add_session(name, scope=global_scope)
        _add_requests(builder, sid, doc["requests"], 0.0, path, "requests", errors, global_scope)
    if builder is None:
        raise TraceError(paths[0] if paths else "", "", None, "no usable kv-cache-tester session")
    return builder


def _add_requests(
    b: TraceBuilder,
    sid: int,
    requests: list[Any],
    t0: float,
    path: str,
    where: str,
    errors: BadRecords,
    scope: tuple[str, str] | None,
) -> None:
    for i, r in enumerate(requests):
        at = f"{where}[{i}]"
        try:
            if not isinstance(r, dict):
                raise TraceError(path, at, None, "expected an object")
            t = float(require_number(r, "t", path, at) or 0.0)
            if r.get("type") == "subagent":
                if not isinstance(r.get("requests"), list):
                    raise TraceError(path, at, "requests", "sub-agent without a request list")
                name = f"{b.session_name(sid)}/{r.get('agent_id', i)}"
                child = b.add_session(name, parent=sid, scope=scope)
                _add_requests(b, child, r["requests"], t0 + t, path, f"{at}.requests", errors, scope)
                continue
            n_in = int(require_number(r, "in", path, at, integer=True) or 0)
            n_out = int(require_number(r, "out", path, at, integer=True) or 0)
            ids = require_block_ids(r, "hash_ids", path, at, n_in, b.block_size)
            think = require_number(r, "think_time", path, at, optional=True)
            api = require_number(r, "api_time", path, at, optional=True)
        except TraceError as e:
            errors(e)
            continue
        b.add_request(
            sid, t0 + t, n_in, n_out, ids,
            think_time=float("nan") if think is None else float(think),
            api_time=float("nan") if api is None else float(api),
            finish=STOP.get(r.get("stop") or "", FINISH_UNKNOWN),
            model=r["model"] if isinstance(r.get("model"), str) and r["model"] else None,
        )

