"""The whole report at the dossier's scale: generated traces of ~10k, ~43k and (with --full) ~432k requests.

For each size: the trace alone (generated in a child process: its peak RSS; saved as .npz, then loaded: seconds
and RSS), and `agentkv report --gen-sessions N --sample-sessions 0` (the whole trace simulated) with its wall
time, CPU seconds and peak PSS and RSS summed over the whole process tree (the report's workers included),
sampled from /proc every second (PSS counts a page the forked workers share once: what the tree takes; RSS once
per process). Requests/s is the trace's requests over the report's wall time. The machine's load average is
printed: on a shared box, wall time is not CPU time.
Run: .venv/bin/python -m bench.report_scale [--full] [--sessions N ...] [--trace-only] [--against-sample]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from agentkv.report.budget import SAMPLE_IN_SIMULATIONS, WHOLE_IN_SIMULATIONS
from agentkv.report.capacity import SAMPLE_SESSIONS
from bench._common import machine
from bench.sample_error import relative_error

SIZES = (300, 1400)  # generated sessions: ~10k and ~46k requests
FULL = 13_250  # ~432k requests, the dossier's count
PAGE = os.sysconf("SC_PAGE_SIZE")
# smaps_rollup of a tree holding GBs costs the kernel a page-table walk: every 0.2 s took 15-19% of a core from
# the 449k-request report (2026-12-06); its memory peaks last minutes
SAMPLE_EVERY_S = 1.0


def tree_memory(root: int) -> tuple[int, int]:
    """(RSS, PSS) bytes of `root` and every process below it, from /proc. RSS counts a page shared by forked
    workers (the trace they inherit) once per process; PSS divides it among them: the memory the tree takes."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(entry.name))
    rss = pss = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
        except (OSError, ValueError):
            continue
        rss += int(fields["Rss"].split()[0]) * 1024
        pss += int(fields["Pss"].split()[0]) * 1024
    return rss, pss


def measured(cmd: list[str]) -> tuple[float, float, tuple[int, int], subprocess.CompletedProcess]:
    """(wall s, CPU s of the process tree, peak tree (RSS, PSS) bytes, the finished process) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0, 0]

    def sample() -> None:
        while proc.poll() is None:
            peak[:] = map(max, peak, tree_memory(proc.pid))
            time.sleep(SAMPLE_EVERY_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    sampler.join()
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, (peak[0], peak[1]), subprocess.CompletedProcess(cmd, proc.returncode, out, err)


_TRACE_JOB = """
import resource, sys, time
from agentkv.workload import load_trace
from agentkv.workload.formats import canonical
from agentkv.workload.generator import GeneratorConfig, generate
t = time.perf_counter()
trace = generate(GeneratorConfig(sessions=int(sys.argv[1])))
gen = time.perf_counter() - t
canonical.save(trace, sys.argv[2])
log = trace.block_log
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
from agentkv.report.capacity import sample_sessions
print(trace.n_requests, int(trace.blocks_per_request.sum()), len(log.ids), gen, rss, sample_sessions(trace).n_requests)
"""
_LOAD_JOB = """
import resource, sys, time
from agentkv.workload import load_trace
t = time.perf_counter()
trace = load_trace(sys.argv[1])
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def trace_figures(sessions: int, folder: str) -> tuple[int, int, str]:
    """The trace's figures; each job reports its own peak RSS (getrusage: a short job ends between /proc samples)."""
    path = f"{folder}/trace-{sessions}.npz"
    p = subprocess.run([sys.executable, "-c", _TRACE_JOB, str(sessions), path], capture_output=True, text=True)
    if p.returncode:
        sys.exit(p.stderr)
    requests, ids, held, gen_s, gen_rss, sample = p.stdout.split()
    q = subprocess.run([sys.executable, "-c", _LOAD_JOB, path], capture_output=True, text=True)
    if q.returncode:
        sys.exit(q.stderr)
    load_s, load_rss = q.stdout.split()
    size = os.path.getsize(path)
    line = (f"trace: {int(requests):,} requests, {int(ids):,} block ids in its requests, {int(held):,} held in "
            f"the block log ({int(ids) / max(int(held), 1):.1f}x fewer); generated in {float(gen_s):.1f} s at "
            f"{int(gen_rss) / 2**30:.2f} GB peak RSS; .npz {size / 2**20:.0f} MiB, loaded in {float(load_s):.1f} s at "
            f"{int(load_rss) / 2**30:.2f} GB peak RSS")
    return int(requests), int(sample), line


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, nargs="*", help=f"generated sessions per point (default {SIZES})")
    ap.add_argument("--full", action="store_true", help=f"add the ~432k-request point ({FULL} sessions)")
    ap.add_argument("--trace-only", action="store_true", help="the trace figures only, no report")
    ap.add_argument("--against-sample", action="store_true",
                    help=f"also the report on its {SAMPLE_SESSIONS}-session sample, lever by lever against the whole")
    args = ap.parse_args()
    sizes = [*(args.sessions or SIZES), *([FULL] if args.full else [])]
    print(f"machine: {machine()}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as folder:
        for sessions in sizes:
            requests, sample, line = trace_figures(sessions, folder)
            print(f"{sessions:,} sessions: {line}", flush=True)
            if args.trace_only:
                continue
            cmd = [sys.executable, "-m", "agentkv.cli", "report", "--gen-sessions", str(sessions),
                   "--sample-sessions", "0", "--json", "--out", f"{folder}/report.html"]
            wall, cpu, (rss, pss), p = measured(cmd)
            if p.returncode:
                print(p.stderr, file=sys.stderr)
                return p.returncode
            print(f"  agentkv report --gen-sessions {sessions} --sample-sessions 0: {wall:.0f} s wall, {cpu:.0f} "
                  f"CPU-s, peak PSS {pss / 2**30:.2f} GB (RSS {rss / 2**30:.2f} GB; process tree), "
                  f"{requests / wall:.0f} requests/s; "
                  f"load average now {os.getloadavg()[0]:.1f}", flush=True)
            whole = _read(f"{folder}/report.json")
            print(f"  its jobs' CPU by stage: {_by_stage(whole)}; {_fit(whole, sample, requests)}", flush=True)
            if args.against_sample:
                _against_sample(sessions, folder, whole)
    return 0


def _read(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _by_stage(doc: dict) -> str:
    cpu: dict[str, list[float]] = {}
    for j in doc["simulation_jobs"]:
        cpu.setdefault(j["stage"], []).append(j["cpu_s"])
    return ", ".join(f"{k} {sum(v):.0f} CPU-s ({len(v)} jobs)" for k, v in cpu.items())


def _fit(doc: dict, sample: int, requests: int) -> str:
    """The budget's projection beside the run, and this run's part in `report/budget.py`'s units: the sample's
    jobs (modes, remedies) per request of the sample and the whole trace's (whole, resize, fleet) per request of
    the trace, in simulations of the speed probe's CPU per request."""
    n = doc["numbers"]
    if not n.get("probe_cpu_s_per_request"):
        return "no projection (the trace is its own sample)"
    cpu = {k: sum(j["cpu_s"] for j in doc["simulation_jobs"] if j["stage"] in k)
           for k in (("modes", "remedies"), ("whole", "resize", "fleet"))}
    per = n["probe_cpu_s_per_request"]
    parts = [c / per / r for c, r in zip(cpu.values(), (sample, requests), strict=True)]
    return (f"projected {n['projected_whole_s']:.0f} s; in probe-requests per request: sample {parts[0]:.0f} "
            f"(budget.SAMPLE_IN_SIMULATIONS {SAMPLE_IN_SIMULATIONS}), whole {parts[1]:.0f} (WHOLE_IN_SIMULATIONS "
            f"{WHOLE_IN_SIMULATIONS}); probe {1e3 * per:.2f} ms a request")


def _against_sample(sessions: int, folder: str, whole: dict) -> None:
    """The report's default sample (`--sample-sessions 120`) on the same trace, lever by lever against the whole."""
    cmd = [sys.executable, "-m", "agentkv.cli", "report", "--gen-sessions", str(sessions), "--sample-sessions",
           str(SAMPLE_SESSIONS), "--json", "--out", f"{folder}/sample.html"]
    wall, cpu, (_, pss), p = measured(cmd)
    if p.returncode:
        sys.exit(p.stderr)
    print(f"  the same with --sample-sessions {SAMPLE_SESSIONS}: {wall:.0f} s wall, {cpu:.0f} CPU-s, peak PSS "
          f"{pss / 2**30:.2f} GB", flush=True)
    sample = _read(f"{folder}/sample.json")
    print("  | lever | GPUs sample / whole | $/Mtok sample / whole (error) | p90 TTFT s sample / whole |")
    print("  | --- | --- | --- | --- |")
    for s, w in zip(sample["sized_to_slo"]["rows"], whole["sized_to_slo"]["rows"], strict=True):
        err = relative_error(s["usd_per_mtok"], w["usd_per_mtok"])
        print(f"  | {w['lever']} | {s['gpus'] or '—'} / {w['gpus'] or '—'} | {_usd(s)} / {_usd(w)} ({err}) | "
              f"{_s(s['ttft_p90_s'])} / {_s(w['ttft_p90_s'])} |", flush=True)


def _usd(row: dict) -> str:
    return f"${row['usd_per_mtok']:.3f}" if row["usd_per_mtok"] else "—"


def _s(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


if __name__ == "__main__":
    sys.exit(main())
