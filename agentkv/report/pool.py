"""Where the report's simulations run: worker processes that never outlive it, tasks on a Ray cluster, or this
process (`workers=1`). The traces the jobs simulate are handed to each worker once, by name, not pickled per job."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path

from agentkv.workload.trace import Trace

PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies
STALL_S = 180.0  # jobs wait and no worker has used any CPU for this long: the pool has stopped (see `wait_first`)
POLL_S = 5.0
SHARED: dict[str, Trace] = {}  # in every worker: the traces its jobs simulate, by the name the report gives them


def share(probes: Trace, modes: Trace, whole: Trace) -> None:
    """The three traces a report simulates (`assemble.Simulated`): the same object where two coincide."""
    SHARED.update(probes=probes, modes=modes, whole=whole)


class _Inline(Executor):
    """`workers=1`: the same code path, run in this process."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        f: Future = Future()
        f.set_result(fn(*args, **kwargs))
        return f


@contextmanager
def executor(workers: int, traces: tuple[Trace, Trace, Trace], ray: str | None = None) -> Iterator[Executor]:
    """Tasks on the Ray cluster at `ray`, or worker processes that never outlive the report: on any exit but
    success (Ctrl-C, SIGTERM, SIGHUP, an error) they are terminated at once rather than left to finish their
    simulations, and each also dies with its parent should that be killed outright (Linux's parent-death
    signal). `traces` are `share`'s arguments."""
    try:
        if ray is not None:
            from agentkv.cluster.tasks import RayExecutor

            with RayExecutor(ray, share, traces, num_cpus=workers) as pool:
                yield pool
            return
        if workers <= 1:
            share(*traces)
            yield _Inline()
            return
        pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_init, initargs=traces)
        try:
            yield pool
        except BaseException:
            for proc in list(pool._processes.values()):  # no public handle before Python 3.14's terminate_workers()
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
    finally:
        SHARED.clear()


class StalledPool(RuntimeError):
    """Jobs wait on a pool whose workers have all stopped working."""


def wait_first(pool: Executor, futures: Iterable[Future]) -> set[Future]:
    """`concurrent.futures.wait(FIRST_COMPLETED)`, except that worker processes none of which has used any CPU for
    STALL_S seconds while jobs wait end the wait with an error instead of it lasting for ever: a report's jobs are
    simulations, never idle, and one 449k-request run was seen waiting on two idle workers whose queue had stopped
    (cause not found). Linux (`/proc`) process pools only; elsewhere a plain wait."""
    futures = list(futures)
    ticks, since = _workers_cpu(pool), time.monotonic()
    while not (done := wait(futures, timeout=POLL_S, return_when=FIRST_COMPLETED)[0]):
        now = _workers_cpu(pool)
        if now is None or now != ticks:
            ticks, since = now, time.monotonic()
        elif time.monotonic() - since >= STALL_S:
            raise StalledPool(f"the simulation pool stopped: {sum(not f.done() for f in futures)} jobs waiting, "
                              f"its workers idle for {time.monotonic() - since:.0f} s; run again (--workers 1 "
                              f"simulates in this process)")
    return done


def result_of(pool: Executor, future: Future):
    """`future.result()` through `wait_first`'s watch on the pool."""
    wait_first(pool, [future])
    return future.result()


def _workers_cpu(pool: Executor) -> int | None:
    """CPU clock ticks the pool's worker processes have used (None: not a process pool on Linux)."""
    procs = getattr(pool, "_processes", None)  # ProcessPoolExecutor's own table; no public handle
    if not isinstance(pool, ProcessPoolExecutor) or not procs or not os.path.isdir("/proc"):
        return None
    ticks = 0
    for pid in list(procs):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # it exited: the pool reports that itself (BrokenProcessPool)
            return None
        ticks += int(fields[11]) + int(fields[12])  # utime, stime (stat(5) fields 14 and 15)
    return ticks


def give_back_freed() -> None:
    """Return the heap a finished job freed to the system (glibc's malloc_trim): a worker otherwise keeps the
    ~1.3 GB a whole-trace simulation of 449k requests freed while it waits for, or runs, a smaller job."""
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None) if sys.platform == "linux" else None
    if trim is not None:  # glibc only (musl has none)
        trim(0)


def _worker_init(probes: Trace, modes: Trace, whole: Trace) -> None:
    """Ctrl-C reaches the whole process group: the parent alone answers it (by ending the workers). SIGTERM ends
    a worker outright (not the parent's unwinding handler, which a fork inherits)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    share(probes, modes, whole)
