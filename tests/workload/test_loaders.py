"""Loaders: format detection, errors that name file/record/field, --skip-bad, gzip, the canonical round trip."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from agentkv.workload import load_trace
from agentkv.workload.errors import TraceError
from agentkv.workload.formats import canonical
from agentkv.workload.trace import Trace
from tests.conftest import AZURE_CODE, CLAUDE_CODE, need


def mooncake_line(ts=0, n_in=1000, n_out=10, ids=(1, 2)) -> str:
    return json.dumps({"timestamp": ts, "input_length": n_in, "output_length": n_out, "hash_ids": list(ids)})


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def session_doc(requests, **extra) -> dict:
    return {"id": "s1", "block_size": 4, "hash_id_scope": "local", "requests": requests, **extra}


def req(t=0.0, n_in=8, n_out=2, ids=(1, 2), **extra) -> dict:
    return {"t": t, "type": "n", "in": n_in, "out": n_out, "hash_ids": list(ids), **extra}


@pytest.mark.parametrize(
    ("lines", "where", "field", "what"),
    [
        ([mooncake_line(), "{not json", mooncake_line()], "line 2", None, "invalid JSON"),
        ([mooncake_line(), json.dumps({"timestamp": 1, "output_length": 1, "hash_ids": []})],
         "line 2", "input_length", "missing"),
        ([mooncake_line(n_out=-3)], "line 1", "output_length", "must be >= 0"),
        ([mooncake_line(), mooncake_line(n_in=1600, ids=(1, 2))], "line 2", "hash_ids", "need at least 3"),
        ([mooncake_line(n_in=10, ids=(1, 2))], "line 1", "hash_ids", "at most 1"),
        ([mooncake_line(ts="soon")], "line 1", "timestamp", "expected a number"),
        ([mooncake_line(n_in=1024, ids=(1, True))], "line 1", "hash_ids", "expected a list of integers"),
        ([mooncake_line(n_in=1024, ids=(1, 2.0))], "line 1", "hash_ids", "expected a list of integers"),
    ],
)
def test_mooncake_errors_name_file_line_field(tmp_path, lines, where, field, what):
    path = write(tmp_path, "t.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(TraceError) as e:
        load_trace(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}:{where}")
    assert what in msg
    if field:
        assert f"field '{field}'" in msg


def test_skip_bad_counts_what_it_skipped(tmp_path):
    lines = [mooncake_line(0), "{oops", mooncake_line(1000, n_out=-1), mooncake_line(2000), mooncake_line(3000)]
    path = write(tmp_path, "t.jsonl", "\n".join(lines))
    t = load_trace(path, skip_bad=True)
    assert t.n_requests == 3
    assert len(t.skipped) == 2
    assert "line 2" in t.skipped[0] and "line 3" in t.skipped[1]


def test_kv_cache_tester_errors_name_the_record(tmp_path):
    doc = session_doc([
        req(0.0),
        req(1.0, ids=(1, 2)),
        {"t": 2.0, "type": "subagent", "agent_id": "a1", "requests": [req(0.0), req(1.0, n_in=-5)]},
    ])
    path = write(tmp_path, "s.json", json.dumps(doc))
    with pytest.raises(TraceError, match=r"s\.json:requests\[2\]\.requests\[1\]: field 'in': must be >= 0"):
        load_trace(path)
    doc["requests"][1].pop("out")
    path = write(tmp_path, "s.json", json.dumps(doc))
    with pytest.raises(TraceError, match=r"requests\[1\]: field 'out': missing"):
        load_trace(path)
    t = load_trace(path, skip_bad=True)
    assert t.n_requests == 2 and len(t.skipped) == 2


def test_kv_cache_tester_subagent_gets_own_scope_and_parent_clock(tmp_path):
    doc = session_doc([
        req(0.0, ids=(7, 8)),
        {"t": 10.0, "type": "subagent", "agent_id": "explore", "requests": [req(0.0, ids=(7, 8)), req(3.0, ids=(7, 8))]},
        req(20.0, ids=(7, 8)),
    ])
    t = load_trace(write(tmp_path, "s.json", json.dumps(doc)))
    assert t.session_names == ["s1", "s1/explore"]
    assert list(t.session_parent) == [-1, 0]
    assert list(t.time[t.session == 1]) == [10.0, 13.0]
    # same local ids, different sessions: different blocks
    assert not np.intersect1d(t.blocks(0), t.blocks(2)).size
    assert np.array_equal(t.blocks(0), t.blocks(1))  # parent's requests share their prefix


def test_gzip_is_read_transparently(tmp_path):
    text = "\n".join(mooncake_line(i * 1000, ids=(1, 2 + i)) for i in range(5))
    plain = load_trace(write(tmp_path, "t.jsonl", text))
    gz = tmp_path / "t.jsonl.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    gzipped = load_trace(str(gz))
    assert gzipped.session_names[0] == "t.jsonl.gz:1"
    assert_same(plain, gzipped, ignore=("session_names",))


def test_unknown_format_is_named(tmp_path):
    path = write(tmp_path, "x.txt", "hello\n")
    with pytest.raises(TraceError, match="unrecognised trace format"):
        load_trace(path)


def test_azure_bad_row(tmp_path):
    path = write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.97,10,2\n"
                                    "2023-11-16 18:17:04.00,ten,2\n")
    with pytest.raises(TraceError, match=r"a\.csv:line 3: field 'ContextTokens'"):
        load_trace(path)


def assert_same(a: Trace, b: Trace, ignore: tuple[str, ...] = ()) -> None:
    for name in set(Trace.__slots__) - {"skipped", *ignore}:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=name)
        else:
            assert x == y, name


def test_canonical_round_trip_every_loader(tmp_path):
    files = sorted(need(CLAUDE_CODE).iterdir())[:12]
    sources = {
        "kv-cache-tester": load_trace([str(f) for f in files]),
        "mooncake": load_trace(write(tmp_path, "m.jsonl", "\n".join(mooncake_line(i, ids=(0, i)) for i in range(50)))),
        "azure": load_trace(str(need(AZURE_CODE))),
        "openai": load_trace(write(tmp_path, "o.jsonl", json.dumps(
            {"timestamp": 5, "messages": [{"role": "user", "content": "x" * 2000}]}))),
    }
    for name, trace in sources.items():
        path = tmp_path / f"{name}.npz"
        canonical.save(trace, str(path))
        back = load_trace(str(path))
        assert_same(trace, back)


def test_canonical_rejects_other_npz(tmp_path):
    path = tmp_path / "x.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ValueError, match="not an agentkv trace"):
        load_trace(str(path))
