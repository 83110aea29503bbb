"""Small random agentic reference streams for property tests: sessions with growing chained prefixes, a
shared system prefix, prefix breaks and compactions."""

from __future__ import annotations

import numpy as np


def random_stream(seed: int, sessions: int, requests: int, shared: int = 3) -> tuple[list[np.ndarray], list[int]]:
    """(block ids per request in order, session of each request)."""
    rng = np.random.default_rng(seed)
    next_id = shared
    prefix = np.arange(shared)
    ctx = [prefix.copy() for _ in range(sessions)]
    out, owner = [], []
    for _ in range(requests):
        s = int(rng.integers(sessions))
        c = ctx[s]
        r = rng.random()
        if r < 0.1 and len(c) > shared + 1:  # a break: everything after a random point is new
            c = c[: int(rng.integers(shared, len(c)))]
        elif r < 0.15:  # compaction back to the shared prefix
            c = prefix.copy()
        grow = int(rng.integers(0, 5))
        c = np.concatenate([c, np.arange(next_id, next_id + grow)])
        next_id += grow
        ctx[s] = c
        out.append(c.copy())
        owner.append(s)
    return out, owner
