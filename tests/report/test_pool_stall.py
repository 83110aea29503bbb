"""A report's wait on its worker pool ends in an error, not for ever, when every worker stops working while jobs
wait; a worker that computes is never taken for stalled however long its job runs."""

from __future__ import annotations

import sys
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from agentkv.report import pool

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the watch reads workers' CPU time from /proc")


def _spin(seconds: float) -> str:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return "done"


@pytest.fixture
def short_watch(monkeypatch):
    monkeypatch.setattr(pool, "STALL_S", 0.6)
    monkeypatch.setattr(pool, "POLL_S", 0.1)


def test_idle_workers_with_jobs_waiting_are_an_error(short_watch):
    ex = ProcessPoolExecutor(1)
    try:
        stuck = ex.submit(time.sleep, 60)  # a worker that uses no CPU while its job waits: as the stalled pool did
        t = time.monotonic()
        with pytest.raises(pool.StalledPool, match=r"1 jobs waiting, its workers idle for \d+ s"):
            pool.result_of(ex, stuck)
        assert time.monotonic() - t < 10
    finally:
        for proc in list(ex._processes.values()):
            proc.terminate()
        ex.shutdown(wait=False, cancel_futures=True)


def test_a_computing_worker_is_waited_for(short_watch):
    with ProcessPoolExecutor(1) as ex:
        job = ex.submit(_spin, 2.0)  # busy well past STALL_S
        assert pool.result_of(ex, job) == "done"
        assert pool.wait_first(ex, [job, ex.submit(_spin, 0.0)])  # done already: no wait


def test_no_watch_outside_a_process_pool():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as ex:
        assert pool._workers_cpu(ex) is None
        assert pool.result_of(ex, ex.submit(time.sleep, 0.2)) is None
