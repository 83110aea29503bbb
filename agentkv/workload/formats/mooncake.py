"""Mooncake JSONL (github.com/kvcache-ai/Mooncake, FAST'25 traces): one request per line.

`{timestamp (ms), input_length, output_length, hash_ids}` with 512-token blocks and ids global to the file.
The trace has no sessions, so each request is its own session placed at its own timestamp; the ids of one
file share one scope (reuse across requests is what the ids say it is).
"""

from __future__ import annotations

from agentkv.workload.builder import TraceBuilder
from agentkv.workload.errors import BadRecords, TraceError, json_object, require_block_ids, require_number

NAME = "mooncake"
BLOCK_SIZE = 512


def looks_like(head: str) -> bool:
    first = head.lstrip().split("\n", 1)[0]
    return first.startswith("{") and '"hash_ids"' in first and '"input_length"' in first


def load(paths: list[str], texts: list[str], errors: BadRecords) -> TraceBuilder:
    b = TraceBuilder(BLOCK_SIZE, source=NAME)
    for path, text in zip(paths, texts, strict=True):
        base = path.rsplit("/", 1)[-1]
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            at = f"line {lineno}"
            try:
                rec = json_object(line, path, at)
                ts = float(require_number(rec, "timestamp", path, at) or 0.0)
                n_in = int(require_number(rec, "input_length", path, at, integer=True) or 0)
                n_out = int(require_number(rec, "output_length", path, at, integer=True) or 0)
                ids = require_block_ids(rec, "hash_ids", path, at, n_in, BLOCK_SIZE)
            except TraceError as e:
                errors(e)
                continue
            sid = b.add_session(f"{base}:{lineno}", start=ts / 1000.0, scope=(NAME, path))
            b.add_request(sid, 0.0, n_in, n_out, ids)
    return b
