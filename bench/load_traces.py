"""Loading the 195 shared Claude Code sessions: our loader vs the floor any JSON loader pays.

Baseline (same run): gunzip + json.loads of the same files, nothing else. Also times the canonical .npz,
which is what repeated replays should read.
Run: .venv/bin/python -m bench.load_traces
"""

from __future__ import annotations

import gzip
import json
import sys
import tempfile

from agentkv.workload import load_trace
from agentkv.workload.formats import canonical
from bench._common import TRACES, best_of, machine


def main() -> int:
    folder = TRACES / "claude-code"
    files = sorted(folder.iterdir())
    raw, _ = best_of(lambda: [json.loads(gzip.decompress(f.read_bytes())) for f in files])
    ours, trace = best_of(lambda: load_trace(str(folder)))
    with tempfile.NamedTemporaryFile(suffix=".npz") as f:
        canonical.save(trace, f.name)
        npz, _ = best_of(lambda: load_trace(f.name))
    print(f"machine: {machine()}")
    print(f"sessions: {len(files)}, requests: {trace.n_requests:,}, block ids: {int(trace.blocks_per_request.sum()):,} "
          f"({len(trace.block_log.ids):,} held in the block log)")
    print(f"baseline gunzip+json.loads: {raw:.2f} s")
    print(f"agentkv load_trace:         {ours:.2f} s  ({ours / raw:.2f}x baseline)  target < 10 s")
    print(f"canonical .npz reload:      {npz:.2f} s  ({npz / raw:.3f}x baseline)")
    return 0 if ours < 10 else 1


if __name__ == "__main__":
    sys.exit(main())
