"""The canonical agentkv trace file: one `.npz` holding the Trace's columns (docs/TRACE_FORMAT.md).

Every loader's output round-trips through it unchanged, and it loads in milliseconds, so convert a large
source once (`agentkv trace convert`) and replay the `.npz` from then on.
"""

from __future__ import annotations

import io
import json

import numpy as np

from agentkv.workload.blocklog import BlockLog, from_flat
from agentkv.workload.trace import Trace

NAME = "agentkv-npz"
FORMAT = "agentkv-trace"
VERSION = 2  # 2: block ids as each session's log; 1: one flat list per request (still read)
MAGIC = b"PK\x03\x04"  # a zip archive, as every .npz is

_ARRAYS = (
    "session_start", "session_parent", "session_tenant", "session", "time", "input_tokens",
    "output_tokens", "think_time", "api_time", "finish",
)
_LOG = {"block_parent": "parent", "block_shared": "shared", "block_new_offsets": "offsets", "block_new_ids": "ids"}
_FLAT = ("block_offsets", "block_ids")  # version 1


def looks_like(head: bytes) -> bool:
    return head.startswith(MAGIC)


def save(trace: Trace, path: str) -> None:
    trace.validate()
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "block_size": trace.block_size,
        "has_block_ids": trace.has_block_ids,
        "session_names": trace.session_names,
        "tenants": trace.tenants,
        "source": trace.source,
        "models": trace.models,
    }
    with open(path, "wb") as f:
        np.savez_compressed(f, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                            model=trace.model, **{k: getattr(trace, k) for k in _ARRAYS},
                            **{k: getattr(trace.block_log, f) for k, f in _LOG.items()})


def load(path: str, data: bytes) -> Trace:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        meta = json.loads(z["meta"].tobytes()) if "meta" in z else {}
        version = meta.get("version")
        missing = [k for k in ("meta", *_ARRAYS, *(_FLAT if version == 1 else _LOG)) if k not in z]
        if missing:
            raise ValueError(f"{path}: not an agentkv trace: array '{missing[0]}' missing")
        if meta.get("format") != FORMAT or version not in (1, VERSION):
            raise ValueError(f"{path}: field 'format': expected {FORMAT} v1 or v{VERSION}, got "
                             f"{meta.get('format')} v{version}")
        columns = {k: z[k] for k in _ARRAYS}
        try:
            log = (from_flat(columns["session"], z["block_offsets"], z["block_ids"]) if version == 1
                   else BlockLog(**{f: z[k].astype(np.int64) for k, f in _LOG.items()}))
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        trace = Trace(
            block_size=int(meta["block_size"]),
            has_block_ids=bool(meta["has_block_ids"]),
            session_names=list(meta["session_names"]),
            tenants=list(meta["tenants"]),
            source=str(meta.get("source", "")),
            models=list(meta.get("models", [])),
            model=z.get("model"),  # None in files written before the model column: not recorded
            block_log=log,
            **columns,
        )
    try:
        trace.validate()
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return trace
