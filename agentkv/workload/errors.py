"""Errors for bad trace input: always name the file, the record and the field."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


class TraceError(ValueError):
    """A malformed record. `where` is a line number or a record path such as `requests[3].subagent.requests[1]`."""

    def __init__(self, path: str, where: str, field_name: str | None, message: str) -> None:
        self.path, self.where, self.field_name = path, where, field_name
        at = f"{path}:{where}" if where else path
        super().__init__(f"{at}: field '{field_name}': {message}" if field_name else f"{at}: {message}")


@dataclass(slots=True)
class BadRecords:
    """Where loaders send TraceErrors: raised at once, or (with --skip-bad) counted and kept for the report."""

    skip: bool = False
    skipped: list[str] = field(default_factory=list)

    def __call__(self, error: TraceError) -> None:
        if not self.skip:
            raise error
        self.skipped.append(str(error))


def require_number(
    rec: dict[str, Any], key: str, path: str, where: str, *, integer: bool = False, optional: bool = False
) -> float | int | None:
    """rec[key] as a non-negative number, or a TraceError naming the field."""
    if key not in rec or rec[key] is None:
        if optional:
            return None
        raise TraceError(path, where, key, "missing")
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TraceError(path, where, key, f"expected a number, got {type(v).__name__} {v!r}")
    if integer and not (isinstance(v, int) or float(v).is_integer()):
        raise TraceError(path, where, key, f"expected an integer, got {v!r}")
    if v != v or v < 0:  # NaN or negative
        raise TraceError(path, where, key, f"must be >= 0, got {v!r}")
    return int(v) if integer else float(v)


def require_block_ids(
    rec: dict[str, Any], key: str, path: str, where: str, input_tokens: int, block_size: int
) -> list[int]:
    """The block id list for `input_tokens` tokens: one id per full block, optionally one for a partial last block."""
    ids = rec.get(key)
    if ids is None:
        raise TraceError(path, where, key, "missing")
    if not isinstance(ids, list) or not set(map(type, ids)) <= {int}:  # in C: traces hold millions of ids; no bools
        raise TraceError(path, where, key, "expected a list of integers")
    full, ceil = input_tokens // block_size, -(-input_tokens // block_size)
    if len(ids) < full:
        raise TraceError(
            path, where, key, f"{len(ids)} block ids for {input_tokens} input tokens: need at least {full} "
            f"(block size {block_size})"
        )
    if len(ids) > ceil:
        raise TraceError(
            path, where, key, f"{len(ids)} block ids for {input_tokens} input tokens: at most {ceil} "
            f"(block size {block_size})"
        )
    return ids


def json_object(line: str, path: str, where: str) -> dict[str, Any]:
    """One JSON object (a JSONL line), or a TraceError saying where it is malformed."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise TraceError(path, where, None, f"invalid JSON: {e.msg}") from None
    if not isinstance(rec, dict):
        raise TraceError(path, where, None, "expected a JSON object")
    return rec
