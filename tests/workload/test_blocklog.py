"""The block log: a trace holds what each request adds, so its memory follows its unique blocks."""

from __future__ import annotations

import io
import json
import tracemalloc

import numpy as np
import pytest

from agentkv.workload import load_trace
from agentkv.workload.builder import TraceBuilder
from agentkv.workload.formats import canonical
from agentkv.workload.generator import GeneratorConfig, generate
from agentkv.workload.trace import Trace


def _growing(turns: int, step: int, edit_every: int = 0) -> tuple[Trace, list[np.ndarray]]:
    """One session whose prompt grows by `step` blocks a turn (every `edit_every`-th turn rewrites its second
    half), built request by request as an agent resends it; returns the trace and the lists it was given."""
    b = TraceBuilder(block_size=16, source="test")
    sid = b.add_session("s")
    ids, nxt, given = np.zeros(0, dtype=np.int64), 0, []
    for k in range(turns):
        keep = len(ids) // 2 if edit_every and k % edit_every == edit_every - 1 else len(ids)
        fresh = step + len(ids) - keep
        ids = np.concatenate([ids[:keep], np.arange(nxt, nxt + fresh)])
        nxt += fresh
        given.append(ids.copy())
        b.add_request(sid, float(k), len(ids) * 16, 1, ids)
    return b.build(), given


def _held_bytes(trace: Trace) -> int:
    log = trace.block_log
    return sum(a.nbytes for a in (log.parent, log.shared, log.offsets, log.ids))


def test_memory_grows_with_unique_blocks_not_total_tokens():
    small, _ = _growing(turns=100, step=4)
    large, _ = _growing(turns=400, step=4)
    total = large.blocks_per_request.sum() / small.blocks_per_request.sum()
    unique = large.n_block_ids / small.n_block_ids
    assert total > 15 and unique == 4  # four times the turns: ~16x the tokens, 4x the new blocks
    assert len(large.block_log.ids) == large.n_block_ids  # each id held once
    assert _held_bytes(large) / _held_bytes(small) == pytest.approx(unique, rel=0.05)


def test_generated_trace_holds_its_new_blocks_only():
    cfg = GeneratorConfig(sessions=40, seed=2)
    tracemalloc.start()
    trace = generate(cfg)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    flat_bytes = int(trace.blocks_per_request.sum()) * 8
    assert _held_bytes(trace) < flat_bytes / 5  # agents resend their context: most of every prompt repeats
    assert peak < flat_bytes / 2  # and building it never held the flat list either


def test_blocks_returns_what_was_given_in_any_order_of_reading():
    trace, given = _growing(turns=60, step=3, edit_every=7)
    assert (trace.block_log.parent >= 0).sum() == 59  # every request extends the one before
    for i in [59, 3, 58, 0, 30, *range(60)]:  # cold, out of order, then in order
        np.testing.assert_array_equal(trace.blocks(i), given[i])
    with pytest.raises(ValueError):
        trace.blocks(5)[0] = 1  # read-only: a shared list, not a copy


def test_a_request_with_no_blocks_reads_back_empty():
    b = TraceBuilder(block_size=16, source="test")
    sid = b.add_session("s")
    b.add_request(sid, 0.0, 0, 1, np.zeros(0, dtype=np.int64))  # an empty prompt: no block at all
    b.add_request(sid, 1.0, 32, 1, np.arange(2))
    trace = b.build()
    assert trace.blocks(0).shape == (0,) and trace.blocks(0).dtype == trace.blocks(1).dtype
    np.testing.assert_array_equal(trace.blocks(1), np.arange(2))


def test_requests_added_out_of_time_order_are_logged_in_time_order():
    b = TraceBuilder(block_size=16)
    sid = b.add_session("s")
    lists = {2.0: [0, 1, 2, 3], 0.0: [0, 1], 1.0: [0, 1, 2], 3.0: [0, 4]}
    for t, ids in lists.items():
        b.add_request(sid, t, len(ids) * 16, 1, ids)
    trace = b.build()
    trace.validate()
    for i, t in enumerate(sorted(lists)):
        np.testing.assert_array_equal(trace.blocks(i), lists[t])


def test_version_1_files_still_load(tmp_path):
    trace = generate(GeneratorConfig(sessions=6, seed=1))
    flat = [trace.blocks(i) for i in range(trace.n_requests)]
    meta = {"format": canonical.FORMAT, "version": 1, "block_size": trace.block_size, "has_block_ids": True,
            "session_names": trace.session_names, "tenants": trace.tenants, "source": trace.source}
    buf = io.BytesIO()
    np.savez_compressed(buf, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                        block_offsets=np.concatenate([[0], np.cumsum([len(f) for f in flat])]).astype(np.int64),
                        block_ids=np.concatenate(flat), **{k: getattr(trace, k) for k in canonical._ARRAYS})
    path = tmp_path / "v1.npz"
    path.write_bytes(buf.getvalue())
    back = load_trace(str(path))
    assert back.block_log == trace.block_log  # the log the builder wrote, recovered from the flat lists
    bad = dict(np.load(path))
    bad["block_offsets"] = bad["block_offsets"][:-1]
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match=r"bad\.npz: trace field block_offsets"):
        load_trace(str(tmp_path / "bad.npz"))
