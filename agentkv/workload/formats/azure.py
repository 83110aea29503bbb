"""Azure LLM inference trace CSV (github.com/Azure/AzurePublicDataset): arrival times and lengths only.

Columns `TIMESTAMP, ContextTokens, GeneratedTokens`. No prefix information, so the trace has no block ids:
it feeds the serving simulator's arrival and length models, not the cache.
"""

from __future__ import annotations

import csv
import io
from datetime import datetime

from agentkv.workload.builder import TraceBuilder
from agentkv.workload.errors import BadRecords, TraceError

NAME = "azure"
COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


def looks_like(head: str) -> bool:
    first = head.lstrip().split("\n", 1)[0]
    return all(c in first for c in COLUMNS)


def load(paths: list[str], texts: list[str], errors: BadRecords) -> TraceBuilder:
    b = TraceBuilder(block_size=1, has_block_ids=False, source=NAME)
    for path, text in zip(paths, texts, strict=True):
        base = path.rsplit("/", 1)[-1]
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            errors(TraceError(path, "line 1", missing[0], "column missing from the header"))
            continue
        for row in reader:
            at = f"line {reader.line_num}"
            try:
                ts = _timestamp(row["TIMESTAMP"], path, at)
                n_in = _count(row, "ContextTokens", path, at)
                n_out = _count(row, "GeneratedTokens", path, at)
            except TraceError as e:
                errors(e)
                continue
            sid = b.add_session(f"{base}:{reader.line_num}", start=ts)
            b.add_request(sid, 0.0, n_in, n_out)
    return b


def _timestamp(value: str | None, path: str, at: str) -> float:
    try:
        return datetime.fromisoformat((value or "").strip()).timestamp()
    except ValueError:
        raise TraceError(path, at, "TIMESTAMP", f"not a timestamp: {value!r}") from None


def _count(row: dict[str, str], key: str, path: str, at: str) -> int:
    value = (row.get(key) or "").strip()
    if not value.isdigit():
        raise TraceError(path, at, key, f"expected a non-negative integer, got {value!r}")
    return int(value)
