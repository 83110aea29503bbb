"""Progress display for long runs (rich), silent when output is for machines."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def progress_bar(total: int, title: str, quiet: bool = False) -> Iterator[Callable[[str], None]]:
    """Yields step(label): call it as each of `total` steps starts."""
    if quiet:
        yield lambda label: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task(title, total=total)
        started = [False]

        def step(label: str) -> None:
            if started[0]:
                bar.advance(task)
            started[0] = True
            bar.update(task, description=f"{title}: {label}")

        yield step
