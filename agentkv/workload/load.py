"""Load traces from files or folders, picking the format by content; `.gz` is read transparently."""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from collections.abc import Iterable

from agentkv.workload.errors import BadRecords, TraceError
from agentkv.workload.formats import azure, canonical, kv_cache_tester, mooncake, openai_log
from agentkv.workload.tokenize import load_tokenizer
from agentkv.workload.trace import Trace, concat_traces

TEXT_FORMATS = (kv_cache_tester, mooncake, openai_log, azure)
HEAD_CHARS = 4096


def load_trace(
    paths: str | Iterable[str],
    *,
    skip_bad: bool = False,
    tokenizer: str | None = None,
    block_size: int = 64,
) -> Trace:
    """Every file under `paths` as one trace. `tokenizer`/`block_size` apply to OpenAI chat logs only."""
    files = _expand([paths] if isinstance(paths, str) else list(paths))
    errors = BadRecords(skip=skip_bad)
    groups: dict[str, tuple[list[str], list[str]]] = {}
    traces: list[Trace] = []
    for path in files:
        data = _read(path)
        if canonical.looks_like(data):
            try:
                traces.append(canonical.load(path, data))
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
                raise TraceError(path, "", None, f"not a whole .npz archive, truncated or damaged ({e}); "
                                 "write it again with `agentkv trace convert`") from None
            continue
        text = _decode(path, data)
        if not text.strip():
            raise TraceError(path, "line 1", None, "the file is empty (no trace records)")
        fmt = next((m for m in TEXT_FORMATS if m.looks_like(text[:HEAD_CHARS])), None)
        if fmt is None and _looks_like_csv(path, text):  # the one CSV format we read: name what the header lacks
            header = text.lstrip().split("\n", 1)[0]
            lacking = next(c for c in azure.COLUMNS if c not in header)
            raise TraceError(path, "line 1", lacking, "column missing from the CSV header (an Azure trace has "
                             f"{', '.join(azure.COLUMNS)})")
        if fmt is None:
            raise TraceError(path, "line 1", None, "unrecognised trace format (expected kv-cache-tester JSON, "
                             "Mooncake JSONL, Azure CSV, OpenAI chat JSONL or an agentkv .npz)")
        paths_, texts = groups.setdefault(fmt.NAME, ([], []))
        paths_.append(path)
        texts.append(text)
    for fmt in TEXT_FORMATS:
        if fmt.NAME not in groups:
            continue
        paths_, texts = groups[fmt.NAME]
        if fmt is openai_log:
            builder = fmt.load(paths_, texts, errors, load_tokenizer(tokenizer), block_size)
        else:
            builder = fmt.load(paths_, texts, errors)
        traces.append(builder.build())
    trace = concat_traces(traces)
    trace.skipped = list(errors.skipped)
    trace.validate()
    return trace


def _expand(paths: list[str]) -> list[str]:
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(
                os.path.join(root, f) for root, _, names in os.walk(p) for f in names if not f.startswith(".")
            )
            if not found:
                raise FileNotFoundError(f"{p}: folder holds no trace files")
            files.extend(found)
        elif os.path.exists(p):
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not files:
        raise FileNotFoundError("no trace paths given")
    return files


def _looks_like_csv(path: str, text: str) -> bool:
    first = text.lstrip().split("\n", 1)[0]
    return path.removesuffix(".gz").endswith(".csv") or ("," in first and first[:1] not in "{[")


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise TraceError(path, "", None, f"corrupt gzip data: {e}") from None
    return data


def _decode(path: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TraceError(path, f"byte {e.start}", None, "not UTF-8 text") from None
