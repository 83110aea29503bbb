"""Progress of long runs: a live bar on a terminal, one line per stage elsewhere (a log, CI), nothing when the
output is for machines. Either way on stderr, so stdout keeps only the command's answer."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextmanager
def progress_bar(total: int | None, title: str, quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """Yields step(label): call it as each of `total` stages starts (None: stages not counted ahead, so a
    spinner and the time so far rather than a bar and the time left)."""
    if quiet:
        yield lambda label: None
        return
    console = Console(stderr=True)
    if not console.is_terminal:
        lines = _Lines(total, title)
        yield lines.step
        lines.flush()
        return
    counted = [BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn()]
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), *(counted if total else [TimeElapsedColumn()]),
                  console=console, transient=True) as bar:
        task = bar.add_task(title, total=total)
        started = [False]

        def step(label: str) -> None:
            if started[0]:
                bar.advance(task)
            started[0] = True
            bar.update(task, description=f"{title}: {label}")

        yield step


class _Lines:
    """One line per stage as it starts, with the time so far. The first stage's line waits for the second (or
    the end): bad input found while loading is then answered by its one error line alone."""

    def __init__(self, total: int | None, title: str) -> None:
        self.total, self.title, self.t0, self.done, self.pending = total, title, time.perf_counter(), 0, ""

    def step(self, label: str) -> None:
        self.done += 1
        count = f"[{self.done}/{self.total}] " if self.total else ""
        line = f"{self.title}: {count}{label} ({time.perf_counter() - self.t0:.0f} s)"
        if self.done == 1:
            self.pending = line
            return
        self.flush()
        print(line, file=sys.stderr, flush=True)

    def flush(self) -> None:
        if self.pending:
            print(self.pending, file=sys.stderr, flush=True)
            self.pending = ""
