"""Shared helpers for benchmarks: best-of-N wall time and the shared data location."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "traces"


def best_of(fn: Callable[[], object], repeat: int = 3, clock: Callable[[], float] = time.perf_counter,
            ) -> tuple[float, object]:
    """Minimum time over `repeat` runs (the least-disturbed run on a shared, noisy machine) and the result;
    `clock`: wall time, or `time.thread_time` for a single-threaded cost that other jobs' load must not blur."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t = clock()
        out = fn()
        best = min(best, clock() - t)
    return best, out


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
