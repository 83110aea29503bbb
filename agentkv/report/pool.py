"""Where the report's simulations run: worker processes that never outlive it, tasks on a Ray cluster, or this
process (`workers=1`). The traces the jobs simulate are handed to each worker once, by name, not pickled per job."""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from contextlib import contextmanager

from agentkv.workload.trace import Trace

PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies
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
