"""Simulation points as Ray tasks: a `concurrent.futures.Executor` over a Ray cluster.

It has the shape of `ProcessPoolExecutor(initializer=, initargs=)`, so the report and the cache sweep run
their points through it unchanged: the initializer's arguments (the traces) go to the object store once, and
each worker process runs the initializer once per object before its first point (a worker reads numpy arrays
from the store without copying them). `ray.init` starts a local cluster when no address is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future, as_completed
from typing import Any

LOCAL = "local"  # `--ray` without an address: start a cluster on this machine

_current = [""]  # in a worker: the objects its initializer last ran with


def connect(address: str = LOCAL, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (or start a local one of `num_cpus` CPUs), once per process."""
    import ray

    if ray.is_initialized():
        return
    if address == LOCAL:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    else:
        ray.init(address=address, log_to_driver=False, configure_logging=False)


def _call(init: Callable[..., None], key: str, refs: list, which: list[int], fn: Callable, *args: Any) -> Any:
    import ray

    if _current[0] != key:
        objs = ray.get(refs)
        init(*(objs[i] for i in which))  # an object given twice arrives as one (`a is b` holds as it did here)
        _current[0] = key
    return fn(*args)


class RayExecutor(Executor):
    """`submit(fn, *args)` runs `fn(*args)` as a Ray task after `initializer(*initargs)` ran in its worker."""

    def __init__(self, address: str = LOCAL, initializer: Callable[..., None] = lambda: None,
                 initargs: tuple = (), num_cpus: int | None = None) -> None:
        import ray

        connect(address, num_cpus)
        distinct = list({id(a): a for a in initargs}.values())
        self._refs = [ray.put(a) for a in distinct]
        self._which = [next(i for i, d in enumerate(distinct) if d is a) for a in initargs]
        self._key = ",".join(r.hex() for r in self._refs) or "none"
        self._init = initializer
        self._task = ray.remote(_call)

    def submit(self, fn, /, *args, **kwargs) -> Future:  # type: ignore[override]
        if kwargs:
            raise TypeError("RayExecutor.submit takes positional arguments only")
        return self._task.remote(self._init, self._key, self._refs, self._which, fn, *args).future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._refs.clear()  # the cluster outlives the executor; the store frees the traces


def run_points(fn: Callable, jobs: list[tuple], ray: str | None, initializer: Callable[..., None],
               initargs: tuple) -> Iterator[tuple[int, Any]]:
    """(index, fn(*job)) for every job: here, one after another, or as Ray tasks, as they finish."""
    if ray is None:
        initializer(*initargs)
        yield from ((k, fn(*job)) for k, job in enumerate(jobs))
        return
    with RayExecutor(ray, initializer, initargs) as pool:
        futures = {pool.submit(fn, *job): k for k, job in enumerate(jobs)}
        yield from ((futures[f], f.result()) for f in as_completed(futures))
