"""`agentkv report --ray` on the whole of a generated trace (no sample), on a local Ray cluster of 1 and then
2 CPUs in the same run: wall time, the CPU-seconds and peak memory of the report's whole process tree (the
driver, Ray's own processes and its workers, sampled every 0.5 s), and the speed-up from the second worker; then
the first run's wall projected to more CPUs from the jobs it ran (`bench/_projection.py`: list scheduling of its
measured jobs, with the assumptions stated there).
Run: .venv/bin/python -m bench.ray_scale [--sessions N] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench._common import machine
from bench._projection import projected_wall

PROJECTED_CPUS = (2, 8, 24, 64)


def _tree(root: int) -> list[int]:
    """`root` and every process below it."""
    parent: dict[int, int] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                parent[int(pid)] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return out


def _rss_and_cpu(pids: list[int]) -> tuple[float, float]:
    """Resident GiB and CPU-seconds (user + system) of these processes now."""
    rss = cpu = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for p in pids:
        try:
            with open(f"/proc/{p}/statm") as f:
                rss += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
                cpu += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            continue
    return rss / 2**30, cpu


def run(trace: str, workers: int, out: str) -> tuple[float, float, float]:
    """(wall s, CPU-s, peak GiB) of one `agentkv report --ray --workers K --sample-sessions 0`."""
    cmd = [sys.executable, "-m", "agentkv.cli", "report", trace, "--ray", "--workers", str(workers),
           "--sample-sessions", "0", "--json", "--out", f"{out}/report-{workers}.html"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, cpu = 0.0, {}
    while proc.poll() is None:
        pids = _tree(proc.pid)
        for p in pids:  # CPU per process, last seen: processes that ended keep what they used
            cpu[p] = _rss_and_cpu([p])[1]
        peak = max(peak, _rss_and_cpu(pids)[0])
        time.sleep(0.5)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"report failed: {proc.stderr.read()[-2000:]}")
    return wall, sum(cpu.values()), peak


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=60)
    ap.add_argument("--workers", default="1,2")
    a = ap.parse_args()
    print(f"machine: {machine()}; load average at start: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as out:
        trace = f"{out}/t.npz"
        gen = subprocess.run([sys.executable, "-m", "agentkv.cli", "trace", "generate", "--sessions",
                              str(a.sessions), "--out", trace], capture_output=True, text=True, check=True)
        print(gen.stdout.strip())
        base, serial, jobs = None, 0.0, []
        for k in (int(w) for w in a.workers.split(",")):
            wall, cpu, peak = run(trace, k, out)
            with open(f"{out}/report-{k}.json") as f:
                ran = json.load(f)["simulation_jobs"]
            projected = f"; projected from the first run's jobs: {projected_wall(jobs, serial, k):.0f} s" if jobs else ""
            if base is None:
                base, jobs = wall, ran
                serial = max(wall - sum(j["cpu_s"] for j in jobs), 0.0)
            print(f"--ray --workers {k}: {wall:.0f} s wall ({base / wall:.2f}x the first), {cpu:.0f} CPU-s, "
                  f"peak {peak:.2f} GiB (process tree); load average after: {os.getloadavg()[0]:.1f}{projected}",
                  flush=True)
        print(f"projection from the first run's {len(jobs)} jobs ({sum(j['cpu_s'] for j in jobs):.0f} CPU-s) and its "
              f"serial part ({serial:.0f} s; bench/_projection.py states the assumptions): "
              + ", ".join(f"{c} CPUs {projected_wall(jobs, serial, c):.0f} s" for c in PROJECTED_CPUS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
