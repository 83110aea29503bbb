"""Incremental construction of a Trace: what every loader and the generator write through.

Sources name blocks in their own id spaces (local to a session, global, 64-bit content hashes). Each
session is added with an id *scope*; equal ids inside one scope are the same block, ids in different scopes
never are. `build()` remaps every scope into one dense id space. A request's ids are logged as they arrive, against the
session's previous request (`BlockLog`), so building a long trace holds only what each request adds.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from agentkv.workload.blocklog import BlockLog, LogWriter, from_parts
from agentkv.workload.trace import FINISH_UNKNOWN, NO_PARENT, Trace

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(slots=True)
class _Session:
    name: str
    start: float
    parent: int
    tenant: int
    scope: Hashable
    times: list[float] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    thinks: list[float] = field(default_factory=list)
    apis: list[float] = field(default_factory=list)
    finishes: list[int] = field(default_factory=list)
    models: list[int] = field(default_factory=list)
    log: LogWriter = field(default_factory=LogWriter)  # the session's requests in the order they were added


class TraceBuilder:
    def __init__(self, block_size: int, has_block_ids: bool = True, source: str = "") -> None:
        if block_size <= 0:
            raise ValueError(f"block size must be positive, got {block_size}")
        self.block_size = block_size
        self.has_block_ids = has_block_ids
        self.source = source
        self._sessions: list[_Session] = []
        self._tenants: dict[str, int] = {}
        self._models: dict[str, int] = {}

    def add_session(
        self,
        name: str,
        start: float = float("nan"),
        parent: int = NO_PARENT,
        tenant: str = "default",
        scope: Hashable | None = None,
    ) -> int:
        """A new session; `scope=None` makes its block ids local to it. Returns its index."""
        sid = len(self._sessions)
        t = self._tenants.setdefault(tenant, len(self._tenants))
        self._sessions.append(_Session(name, start, parent, t, ("local", sid) if scope is None else scope))
        return sid

    def session_name(self, session: int) -> str:
        return self._sessions[session].name

    def add_request(
        self,
        session: int,
        time: float,
        input_tokens: int,
        output_tokens: int,
        block_ids: np.ndarray | list[int] | None = None,
        think_time: float = float("nan"),
        api_time: float = float("nan"),
        finish: int = FINISH_UNKNOWN,
        model: str | None = None,
    ) -> None:
        s = self._sessions[session]
        s.models.append(-1 if model is None else self._models.setdefault(model, len(self._models)))
        s.times.append(time)
        s.inputs.append(input_tokens)
        s.outputs.append(output_tokens)
        s.thinks.append(think_time)
        s.apis.append(api_time)
        s.finishes.append(finish)
        s.log.append(0, _EMPTY if block_ids is None else np.asarray(block_ids, dtype=np.int64))

    def build(self) -> Trace:
        sessions = self._sessions
        order = [np.argsort(np.asarray(s.times), kind="stable") for s in sessions]

        def column(attr: str, dtype: type) -> np.ndarray:
            parts = [np.asarray(getattr(s, attr), dtype=dtype)[o] for s, o in zip(sessions, order, strict=True)]
            return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

        return Trace(
            block_size=self.block_size,
            has_block_ids=self.has_block_ids,
            session_names=[s.name for s in sessions],
            session_start=np.array([s.start for s in sessions], dtype=np.float64),
            session_parent=np.array([s.parent for s in sessions], dtype=np.int32),
            session_tenant=np.array([s.tenant for s in sessions], dtype=np.int32),
            tenants=list(self._tenants),
            session=np.repeat(np.arange(len(sessions), dtype=np.int32), [len(s.times) for s in sessions]),
            time=column("times", np.float64),
            input_tokens=column("inputs", np.int64),
            output_tokens=column("outputs", np.int64),
            think_time=column("thinks", np.float32),
            api_time=column("apis", np.float32),
            finish=column("finishes", np.int8),
            block_log=self._block_log(order),
            source=self.source,
            models=list(self._models),
            model=column("models", np.int16),
        )

    def _block_log(self, order: list[np.ndarray]) -> BlockLog:
        """Every session's log in time order, requests numbered across the trace, and each scope's ids remapped
        to a dense range of its own (its new ids name every id it holds). Each session's writer is copied into
        one array and dropped, and ids are remapped in place: building holds about one copy of the log (so
        build() once)."""
        for s, o in zip(self._sessions, order, strict=True):
            s.log = _in_order(s.log, o)
        entry = np.cumsum([0] + [sum(len(n) for n in s.log.new) for s in self._sessions])
        ids = np.empty(int(entry[-1]), dtype=np.int64)
        parents, shared, counts, first = [], [], [], 0
        for sid, s in enumerate(self._sessions):
            log = s.log.log()
            s.log = LogWriter()
            ids[entry[sid] : entry[sid + 1]] = log.ids
            parents.append(np.where(log.parent >= 0, log.parent + first, NO_PARENT))
            shared.append(log.shared)
            counts.append(np.diff(log.offsets))
            first += log.n_requests
        by_scope: dict[Hashable, list[int]] = {}
        for sid, s in enumerate(self._sessions):
            by_scope.setdefault(s.scope, []).append(sid)
        offset = 0
        for sids in by_scope.values():
            spans = [(int(entry[sid]), int(entry[sid + 1])) for sid in sids]
            if len(by_scope) == 1:
                ids, offset = densify(ids)
                break
            inverse, n_unique = densify(np.concatenate([ids[a:b] for a, b in spans]))
            at = np.cumsum([0] + [b - a for a, b in spans])
            for (a, b), lo in zip(spans, at.tolist(), strict=False):
                ids[a:b] = inverse[lo : lo + b - a] + offset
            offset += n_unique
        if not parents:
            return from_parts([], [], [])
        return BlockLog(np.concatenate(parents), np.concatenate(shared),
                        np.concatenate([[0], np.cumsum(np.concatenate(counts))]).astype(np.int64), ids)


def _in_order(writer: LogWriter, order: np.ndarray) -> LogWriter:
    """A session's log re-written for its requests in `order` (as added, in the usual case: nothing to do)."""
    if np.array_equal(order, np.arange(len(order))):
        return writer
    log, w = writer.log(), LogWriter()
    for i in order.tolist():
        w.append(0, log.blocks(i))
    return w


def densify(ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel ids as 0..n-1 (order-preserving): a lookup table for small non-negative ids, else a sort."""
    if len(ids) == 0:
        return ids.astype(np.int64), 0
    lo, hi = int(ids.min()), int(ids.max())
    if lo >= 0 and hi < 4 * len(ids) + 1024:
        present = np.zeros(hi + 1, dtype=bool)
        present[ids] = True
        if lo == 0 and present.all():  # already dense (the generator's ids): nothing to relabel
            return ids.astype(np.int64, copy=False), hi + 1
        table = np.cumsum(present, dtype=np.int32 if hi < 2**31 else np.int64)
        table -= 1
        return table[ids].astype(np.int64), int(table[-1]) + 1
    uniq, inverse = np.unique(ids, return_inverse=True)
    return inverse.astype(np.int64), len(uniq)
