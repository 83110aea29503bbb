"""A report's wall time on more workers, projected from the jobs it ran (report.json's simulation_jobs).

Assumptions (stated wherever a projection is printed): each job takes the CPU seconds it took here, whatever
runs beside it (no memory-bandwidth or scheduling contention; Ray's per-task overhead ignored); jobs start in the
order the report submits them, each stage of a lever when the one before it ends (its every mode, then its
remedies, then the whole trace (the pair side by side), then a search on from it, then the same fleet, which also
waits for the top lever's modes and remedies: their size is the fleet run ahead, `stages.Levers.guess`);
the driver's own work (window fit, placement, API replays, HTML) is serial: the measured wall at one worker
less the jobs' CPU seconds.
"""

from __future__ import annotations

import heapq
from collections import defaultdict, deque

from agentkv.report.ladder import LADDER
from agentkv.report.stages import FLEET, MODES, REMEDIES, RESIZE, WHOLE


def projected_wall(jobs: list[dict], serial_s: float, cpus: int) -> float:
    """Seconds the report would take on `cpus` workers (see the module's assumptions)."""
    cost: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for j in jobs:
        cost[j["lever"]][j["stage"]].append(float(j["cpu_s"]))
    order = [r.name for r in reversed(LADDER) if r.name in cost]  # the costliest rungs first, as submitted
    chain = {name: [st for st in (REMEDIES, WHOLE, RESIZE) if cost[name][st]] for name in order}
    left = {name: len(cost[name][MODES]) for name in order}
    queue = deque((name, MODES, s) for name in order for s in cost[name][MODES])
    guess_known = False
    waiting: list[str] = []  # sized levers whose fleet waits for the guess
    running: list[tuple[float, int, str, str]] = []
    now, seq = 0.0, 0
    while queue or running:
        while queue and len(running) < cpus:
            name, stage, s = queue.popleft()
            heapq.heappush(running, (now + s, seq, name, stage))
            seq += 1
        now, _, name, stage = heapq.heappop(running)
        left[name] -= 1
        if left[name] or stage == FLEET:
            continue
        guess_known |= name == order[0] and chain[name][:1] != [REMEDIES]  # the top lever's sample size
        if chain[name]:  # the lever's next stage
            nxt = chain[name].pop(0)
            left[name] = len(cost[name][nxt])
            queue.extend((name, nxt, s) for s in cost[name][nxt])
        else:
            waiting.append(name)
        for lever in waiting if guess_known else ():
            left[lever] = len(cost[lever][FLEET])
            queue.extend((lever, FLEET, s) for s in cost[lever][FLEET])
        waiting = waiting if not guess_known else []
    return serial_s + now
