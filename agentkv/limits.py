"""Sizes that would exhaust this machine, refused before any work, naming the flag and the memory it would need:
a run that swaps for minutes and is then killed says nothing a one-line estimate could not."""

from __future__ import annotations

import math

import numpy as np

from agentkv.cli_errors import UsageError
from agentkv.workload.generator import GeneratorConfig

ID_BYTES = 8  # one int64 block id per full block of every request
USABLE = 0.8  # of the memory available now: the rest is the program, its plots and the machine's other work


def available_bytes() -> int | None:
    """Memory the kernel says can be taken without swapping (Linux's MemAvailable), else None: not checked."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def gib(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 2**10:,.0f} KiB"


def generated_bytes_per_session(cfg: GeneratorConfig) -> float:
    """An upper estimate of a generated session's block ids: its mean turns, each at its compaction threshold
    (about twice what the default workload measures: 1.5 MiB per session)."""
    if cfg.shapes:
        shapes = np.asarray(cfg.shapes, dtype=np.float64)
        tokens = float((shapes[:, 1] * shapes[:, 4]).mean())
    else:
        turns = cfg.turns.median * math.exp(cfg.turns.sigma**2 / 2)  # a log-normal's mean
        tokens = turns * sum(w.share * w.compact_at for w in cfg.windows)
    return tokens / cfg.block_size * ID_BYTES if cfg.with_block_ids else 64.0 * cfg.turns.median


def check_generated(cfg: GeneratorConfig, flag: str) -> None:
    per = generated_bytes_per_session(cfg)
    need, have = per * cfg.sessions, available_bytes()
    if have is not None and need > USABLE * have:
        raise UsageError(f"{flag} {cfg.sessions:,}: a generated trace that large needs about {gib(need)} of memory "
                         f"({gib(per)} per session), more than the {gib(USABLE * have)} usable here "
                         f"({gib(have)} available); at most {int(USABLE * have / per):,} sessions fit")


def check_concurrency(concurrency: float, top_sessions: int, flag: str = "--concurrency") -> None:
    """More sessions open at once than the trace holds is load no run can offer; the fleet sized for it would be
    simulated replica by replica (hundreds, gigabytes) to serve a handful of sessions."""
    if concurrency > top_sessions:
        raise UsageError(f"{flag} {concurrency:g}: the trace has {top_sessions:,} sessions, so at most "
                         f"{top_sessions:,} are ever open at once; give at most that or more sessions")
