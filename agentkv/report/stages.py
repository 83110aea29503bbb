"""The report's simulation jobs, stage by stage: every lever's modes on the sample, its remedies, its whole-trace
sizing, and its run on the same fleet, each stage submitted to the pool as the one before it ends."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agentkv.report.ladder import LADDER
from agentkv.report.pool import give_back_freed, wait_first
from agentkv.report.rungs import (
    RungOutcome,
    bracketed,
    cheapest,
    follow_ups,
    mode_job,
    remedy_job,
    replicas_for,
    serve_job,
    whole_job,
    whole_pair,
)
from agentkv.report.sizing import size_to_slo
from agentkv.sim.simulator import SimResult
from agentkv.workload.trace import Trace

# a lever's stages, in order: every mode on the sample, remedies, the whole trace (the sample's size and one fewer
# side by side), a search on from them where they do not bracket the size, the same fleet
MODES, REMEDIES, WHOLE, RESIZE, FLEET = "modes", "remedies", "whole", "resize", "fleet"


@dataclass(slots=True, frozen=True)
class JobTime:
    """One simulation job of the report and the CPU seconds it took in its worker: what a projection to more
    workers schedules (`bench.ray_scale`)."""

    stage: str
    lever: str
    mode: str
    cpu_s: float
    replicas: int = 0  # the fleet a same-fleet or whole-trace run was on (0: a job of several runs)


def _timed(fn: Callable[[tuple], Any], args: tuple) -> tuple[Any, float]:
    """One job and its CPU seconds; then the memory it freed goes back to the system (`pool.give_back_freed`)."""
    cpu = time.process_time()
    out = fn(args)
    cpu = time.process_time() - cpu
    give_back_freed()
    return out, cpu


@dataclass(slots=True)
class Levers:
    """Every lever's jobs on the pool, each stage submitted as the one before it ends: every (lever, mode) job;
    per lever, the cheapest mode (`cheapest`), then where output speed sets its size, the remedies real engines
    use (`remedy`), then where the modes were chosen on the capacity sample, that mode on the whole trace (its
    sample's size and one fewer side by side, `whole_pair`; searched on in a worker where they do not bracket
    it), then its run on the same fleet as soon as that fleet is known: given, or the top lever's size where it
    met the SLO (else once every lever is sized, `choose_fleet`). Until the top lever is sized on the whole trace,
    the fleet its sample's size gives is run ahead (`guess`: the two agreed at every scale measured); a fleet run
    needs a lever's mode, not its size, so it starts beside the lever's whole-trace pair. A run ahead on another
    fleet than the final one is timed and not used."""

    pool: Executor
    jobs: list[tuple]
    whole: Trace | None  # the trace the modes are sized on again (None: they are not)
    gpus: int | None  # the same fleet's GPUs, once known
    step: Callable[[str], None]
    guess: int | None = None  # the top lever's GPUs on the sample, while its whole-trace size is not known
    flying: dict[int, int] = field(default_factory=dict)  # lever -> replicas of its same-fleet run in flight
    chosen: dict[int, RungOutcome] = field(default_factory=dict)  # lever -> its mode chosen on the sample
    ahead: dict[int, dict[int, SimResult]] = field(default_factory=dict)  # fleet runs that ended before its size
    todo: dict[Future, tuple[str, int, int]] = field(default_factory=dict)
    modes: dict[int, tuple[RungOutcome, dict[int, SimResult]]] = field(default_factory=dict)
    pairs: dict[int, tuple[RungOutcome, list[int], dict[int, SimResult]]] = field(default_factory=dict)
    sized: dict[int, tuple[RungOutcome, dict[int, SimResult]]] = field(default_factory=dict)  # by ladder index
    times: list[JobTime] = field(default_factory=list)

    def start(self) -> None:
        """Every (lever, mode) job, the costliest rungs first (so two workers end together)."""
        for i, job in reversed(list(enumerate(self.jobs))):
            self._submit(MODES, i, mode_job, job)

    def run(self, offered: float, tp: int) -> tuple[list[RungOutcome], int, str]:
        """Every later stage as the one before it ends: (outcomes in ladder order, the fleet's GPUs, how it was
        chosen)."""
        given = self.gpus
        while self.todo:
            done = wait_first(self.pool, self.todo)
            for fut in [f for f in self.todo if f in done]:  # in the order submitted: one worker, one order
                self._done(*self.todo.pop(fut), *fut.result())
            if not self.todo and self.gpus is None:
                self._fleet_known(choose_fleet(self.outcomes(), offered, tp)[0])
        outcomes = self.outcomes()
        return outcomes, self.gpus, "given with --replicas" if given else choose_fleet(outcomes, offered, tp)[1]

    def outcomes(self) -> list[RungOutcome]:
        return [self.sized[k][0] for k in sorted(self.sized)]

    @property
    def load(self) -> tuple:
        """(arrival, offered sessions, $/GPU-hour): what every job after the modes is given."""
        return self.jobs[0][2:5]

    def _submit(self, stage: str, i: int, fn: Callable[[tuple], Any], args: tuple, replicas: int = 0) -> None:
        self.todo[self.pool.submit(_timed, fn, args)] = (stage, i, replicas)

    def _time(self, stage: str, out: RungOutcome, cpu_s: float, replicas: int = 0) -> None:
        self.times.append(JobTime(stage, out.rung.name, out.spec.mode, cpu_s, replicas))  # type: ignore[union-attr]

    def _done(self, stage: str, i: int, replicas: int, found: Any, cpu_s: float) -> None:
        if stage == FLEET:
            return self._fleet_done(i, replicas, found, cpu_s)
        if stage == WHOLE and replicas:
            return self._pair_done(i, replicas, found, cpu_s)
        self._time(stage, found[0], cpu_s)
        if stage == MODES:
            self.modes[i] = found
            mine = [k for k, j in enumerate(self.jobs) if j[1] is self.jobs[i][1]]
            if not all(k in self.modes for k in mine):
                return
            i, found = LADDER.index(self.jobs[i][1]), cheapest([self.modes.pop(k) for k in mine])
            if follow_ups(found[0]):
                return self._submit(REMEDIES, i, remedy_job, (found, *self.jobs[mine[0]][2:]))
        if self.whole is not None and stage in (MODES, REMEDIES):
            return self._start_whole(i, found[0])
        self._sized(i, found)

    def _start_whole(self, i: int, chosen: RungOutcome) -> None:
        self.chosen[i] = chosen
        pair = whole_pair(self.whole, chosen)  # type: ignore[arg-type]
        if not pair:
            self._submit(WHOLE, i, whole_job, (chosen, *self.load))
        else:
            self.pairs[i] = (chosen, pair, {})
            for r in pair:
                self._submit(WHOLE, i, serve_job, (chosen.spec, chosen.rung, self.load[0], r), r)
        if i == len(LADDER) - 1 and self.gpus is None and chosen.sized.cost is not None:
            self.guess = chosen.sized.cost.gpus
            for k in self.sized:
                self._to_fleet(k, self.guess)
            for k in self.pairs:
                self._beside_pair(k)
        elif i in self.pairs and (self.gpus or self.guess):
            self._beside_pair(i)

    def _beside_pair(self, i: int) -> None:
        """A lever whose whole-trace pair is running: its run on the fleet (or the guess) beside it, unless the
        pair makes that run (a fleet run needs the lever's mode, not its size)."""
        chosen, pair, _ = self.pairs[i]
        n = replicas_for(self.gpus or self.guess, chosen.spec)  # type: ignore[arg-type]
        if n not in pair and n not in self.ahead.get(i, {}):
            self._fleet_job(i, chosen, n)

    def _fleet_job(self, i: int, out: RungOutcome, n: int) -> None:
        """Lever `i` on `n` replicas of its mode, unless that run is in flight already."""
        if self.flying.get(i) != n:
            self.flying[i] = n
            self._submit(FLEET, i, serve_job, (out.spec, out.rung, self.load[0], n), n)

    def _pair_done(self, i: int, replicas: int, found: SimResult, cpu_s: float) -> None:
        """Sized here where the pair brackets the size (no simulation: `size_to_slo` reads the two runs), else
        searched on in a worker from them."""
        chosen, pair, runs = self.pairs[i]
        runs[replicas] = found
        self._time(WHOLE, chosen, cpu_s, replicas)
        if len(runs) < len(pair):
            return
        del self.pairs[i]
        if not bracketed(pair, runs, chosen.spec):  # type: ignore[arg-type]
            return self._submit(RESIZE, i, whole_job, (chosen, *self.load, runs))
        arrival, offered, gpu_hour = self.load
        sized = size_to_slo(self.whole, chosen.spec, chosen.rung, arrival, chosen.capacity, offered,  # type: ignore
                            gpu_hour, runs, start=pair[0])
        assert len(runs) == len(pair), "a bracketed size is read from its runs, never simulated here"
        self._sized(i, (RungOutcome(chosen.rung, chosen.capacity, sized, None, chosen.spec), runs))

    def _sized(self, i: int, found: tuple[RungOutcome, dict[int, SimResult]]) -> None:
        for n, run in self.ahead.pop(i, {}).items():
            found[1].setdefault(n, run)
        self.sized[i] = found
        self.step(f"{LADDER[i].name} sized ({found[0].spec.mode})")  # type: ignore[union-attr]
        top = self.sized.get(len(LADDER) - 1, (None,))[0]
        if self.gpus is None and top is not None and top.sized.cost is not None:
            self._fleet_known(top.sized.cost.gpus)  # what all levers together need: `choose_fleet`'s first rule
        elif self.gpus is not None or self.guess is not None:
            self._to_fleet(i, self.gpus or self.guess)  # type: ignore[arg-type]

    def _fleet_known(self, gpus: int) -> None:
        self.gpus = gpus
        for i in self.sized:
            self._to_fleet(i, gpus)
        for i in self.pairs:
            self._beside_pair(i)

    def _to_fleet(self, i: int, gpus: int) -> None:
        """Lever `i` on `gpus` GPUs: the fleet (then the run its sizing made, where it has one, is its fleet run and
        only the sized run is kept: the views read no other), or the guess (run ahead unless it was made)."""
        out, runs = self.sized[i]
        n = replicas_for(gpus, out.spec)  # type: ignore[arg-type]  # a wide mode's replicas hold more GPUs
        if out.fleet_run is not None:
            return
        if n not in runs:
            self._fleet_job(i, out, n)
        elif gpus == self.gpus:
            out.fleet_run = runs[n]
            self.sized[i] = (out, {})

    def _fleet_done(self, i: int, replicas: int, found: SimResult, cpu_s: float) -> None:
        if self.flying.get(i) == replicas:
            del self.flying[i]
        if i not in self.sized:  # run beside its whole-trace pair: joins its runs once it is sized
            self.ahead.setdefault(i, {})[replicas] = found
            return self._time(FLEET, self.chosen[i], cpu_s, replicas)
        out, runs = self.sized[i]
        self._time(FLEET, out, cpu_s, replicas)
        if out.fleet_run is None:
            runs[replicas] = found
            if self.gpus is not None:
                self._to_fleet(i, self.gpus)


def choose_fleet(outcomes: list[RungOutcome], offered: float, tp: int) -> tuple[int, str]:
    """GPUs: what all levers together need; where they miss the SLO, the most any lever met it on; where none
    did, one `tp`-GPU replica per offered session."""
    top = outcomes[-1].sized
    if top.cost:
        return top.cost.gpus, "the size all levers together need to meet the SLO"
    met = [o.sized.cost.gpus for o in outcomes if o.sized.cost]
    if met:
        return max(met), "the largest size at which any lever met the SLO"
    return max(int(np.ceil(offered)), 1) * tp, "one replica per offered session (no lever met the SLO)"
