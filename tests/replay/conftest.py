"""Small agentic traces in kv-cache-tester's format, written by the tests that replay them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_trace(path: Path, sessions: int = 2, turns: int = 10, seed: int = 0) -> Path:
    """Sessions whose context grows turn by turn (as an agent's does), with a compaction now and then."""
    rng = np.random.default_rng(seed)
    docs = []
    for s in range(sessions):
        ids = list(range(int(rng.integers(8, 20))))
        nxt = len(ids)
        t, reqs = 0.0, []
        for _ in range(turns):
            n_in = 64 * len(ids) + int(rng.integers(0, 64))
            api = float(rng.uniform(0.5, 3))
            reqs.append({"t": round(t, 2), "type": "n", "in": n_in, "out": int(rng.integers(20, 200)),
                         "hash_ids": list(ids), "stop": "tool_use", "api_time": api, "think_time": 1.0})
            t += api + 1.0
            if rng.random() < 0.15:  # compaction: keep the system prompt, drop the history
                ids = ids[:4]
            grow = int(rng.integers(2, 8))
            ids += list(range(nxt, nxt + grow))
            nxt += grow
        docs.append({"id": f"s{s}", "block_size": 64, "hash_id_scope": "local", "requests": reqs})
    path.mkdir(parents=True, exist_ok=True)
    for d in docs:
        (path / f"{d['id']}.json").write_text(json.dumps(d))
    return path
