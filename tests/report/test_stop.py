"""A report stopped by SIGTERM, SIGHUP or Ctrl-C leaves no worker process behind, and stops at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def children(pid: int) -> list[int]:
    """Live (not zombie) processes whose parent is `pid`, from /proc."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            after_name = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended while we looked
        if int(after_name[1]) == pid and after_name[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _interruptible() -> None:
    """A suite started in the background (`pytest &` from a script) ignores SIGINT, and the report would inherit
    that (Python keeps an ignored SIGINT ignored): the child gets the default, as one started from a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
@pytest.mark.parametrize(("signum", "group", "status"), [
    (signal.SIGTERM, False, -signal.SIGTERM),  # a supervisor's stop, to the parent alone
    (signal.SIGHUP, False, -signal.SIGHUP),  # the terminal closed
    (signal.SIGINT, True, 130),  # Ctrl-C: the terminal signals the whole process group
], ids=["SIGTERM", "SIGHUP", "Ctrl-C"])
def test_a_stopped_report_leaves_no_worker_running(tmp_path, signum, group, status):
    proc = subprocess.Popen([sys.executable, "-m", "agentkv.cli", "report", "--gen-sessions", "60", "--workers", "2",
                             "--out", str(tmp_path / "r.html")], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, preexec_fn=_interruptible)
    try:
        deadline = time.monotonic() + 120
        while len(workers := children(proc.pid)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert len(workers) == 2, "the report never started its two workers"
        time.sleep(1.0)  # well inside their simulations (the whole report takes a minute)
        (os.killpg if group else os.kill)(proc.pid, signum)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == status, err
    last = err.strip().splitlines()[-1]  # after the stages' progress lines (stderr is not a terminal here)
    assert "Traceback" not in err and last in ("agentkv: interrupted", f"agentkv: stopped by {signum.name}"), err
    deadline = time.monotonic() + 5
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [w for w in workers if alive(w)], "workers outlived the report"
    assert took < 10, took  # not the minute the simulations in flight had left
