"""Each request's block ids, held as its session's log: the request it extends, how much of it, and what is new.

An agent resends its whole context every turn, so ~95% of a prompt's blocks repeat the previous prompt's. A
flat list of every request's ids grows with total tokens (432k requests of ~96k tokens: billions of ids); the log
grows with what is new. Request i's ids are `blocks(parent[i])[:shared[i]]` followed by its new ids. A parent is
always an earlier request of the same session, so a session's requests hold, between them, exactly the ids its
new ids name: set-wise readers (who holds an id, which ids a group of requests touches) work on the new ids alone.
`blocks(i)` is the explicit accessor for the few readers that need a request's full list.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

NO_PARENT = -1
_CACHED = 512  # recently built lists kept: readers walk sessions side by side, each extending its last request


@dataclass(slots=True, eq=False)
class BlockLog:
    parent: np.ndarray  # int64 [R]: an earlier request of the same session, NO_PARENT when nothing is shared
    shared: np.ndarray  # int64 [R]: leading ids repeated from the parent (0 without one)
    offsets: np.ndarray  # int64 [R+1]: request i's new ids are ids[offsets[i]:offsets[i+1]]
    ids: np.ndarray  # int64 [sum of new]: dense block ids
    _built: OrderedDict = field(default_factory=OrderedDict, repr=False, compare=False)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BlockLog) and all(
            np.array_equal(getattr(self, f), getattr(other, f)) for f in ("parent", "shared", "offsets", "ids"))

    __hash__ = None  # type: ignore[assignment]  # holds arrays

    @property
    def n_requests(self) -> int:
        return len(self.parent)

    def lengths(self) -> np.ndarray:
        """Block ids per request (shared + new)."""
        return self.shared + np.diff(self.offsets)

    def new(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def blocks(self, i: int) -> np.ndarray:
        """Request i's full list of block ids (read-only). Walks up its parents to one built recently (a reader
        going through a session finds the previous request there), so the cost is O(its length) in numpy."""
        got = self._built.get(i)
        if got is not None:
            self._built.move_to_end(i)
            return got
        pieces, need, j = [], int(self.shared[i] + self.offsets[i + 1] - self.offsets[i]), i
        while need > 0:
            base = self._built.get(j) if j != i else None
            if base is not None:
                pieces.append(base[:need])
                break
            k = int(self.shared[j])
            pieces.append(self.new(j)[: max(need - k, 0)])
            need, j = min(need, k), int(self.parent[j])
        out = np.concatenate(pieces[::-1]) if pieces else self.ids[:0].copy()  # no ids: an empty prompt
        out.flags.writeable = False
        self._built[i] = out
        if len(self._built) > _CACHED:
            self._built.popitem(last=False)
        return out

    def drop_built(self) -> None:
        """Forget the lists built so far: a reader is done with a log that is kept (`arrivals.place`)."""
        self._built.clear()

    def n_ids(self) -> int:
        return int(self.ids.max()) + 1 if len(self.ids) else 0

    def owners(self) -> np.ndarray:
        """The request of every entry of `ids`."""
        return np.repeat(np.arange(self.n_requests, dtype=np.int64), np.diff(self.offsets))

    def covering(self, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, request) pairs such that, per value of `group` (one per request), the ids are the same set as
        its requests' full lists: the new ids, plus the shared part of each request whose parent is in another
        group (one per session and group boundary, not one per request)."""
        cut = np.flatnonzero((self.parent >= 0) & (group[np.maximum(self.parent, 0)] != group))
        extra = [self.blocks(int(i))[: int(self.shared[i])] for i in cut]
        ids = np.concatenate([self.ids, *extra]) if extra else self.ids
        owner = np.concatenate([self.owners(), np.repeat(cut, [len(e) for e in extra]).astype(np.int64)])
        return ids, owner

    def detach(self, requests: np.ndarray) -> BlockLog:
        """The log with `requests` holding their full lists as new ids (no parent): for cutting a session."""
        requests = np.asarray(requests, dtype=np.int64)
        requests = np.sort(requests[self.parent[requests] >= 0])
        if not len(requests):
            return self
        parts, at = [], 0
        for i in requests.tolist():
            parts += [self.ids[at : self.offsets[i]], self.blocks(i)]
            at = int(self.offsets[i + 1])
        parts.append(self.ids[at:])
        counts = np.diff(self.offsets)
        counts[requests] = self.lengths()[requests]
        parent, shared = self.parent.copy(), self.shared.copy()
        parent[requests], shared[requests] = NO_PARENT, 0
        return BlockLog(parent, shared, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                        np.concatenate(parts).astype(np.int64))

    def take(self, requests: np.ndarray) -> BlockLog:
        """The log of `requests` (ascending, parents included), parents renumbered and ids left as they are."""
        requests = np.asarray(requests, dtype=np.int64)
        at = np.full(self.n_requests, NO_PARENT, dtype=np.int64)
        at[requests] = np.arange(len(requests))
        parent = self.parent[requests]
        if np.any((parent >= 0) & (at[np.maximum(parent, 0)] < 0)):
            raise ValueError("block log: a request taken without its parent")
        counts = np.diff(self.offsets)[requests]
        starts = self.offsets[:-1][requests]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        picks = np.repeat(starts - offsets[:-1], counts) + np.arange(offsets[-1])
        return BlockLog(np.where(parent >= 0, at[np.maximum(parent, 0)], NO_PARENT), self.shared[requests].copy(),
                        offsets, self.ids[picks])

    def with_ids(self, ids: np.ndarray) -> BlockLog:
        """The same log with its new ids replaced (renumbered)."""
        return BlockLog(self.parent, self.shared, self.offsets, np.asarray(ids, dtype=np.int64))


def lead_in_other_sessions(log: BlockLog, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per request, the length of the leading run of its ids that some other session also names (sessions own
    the request ranges `bounds[s]:bounds[s+1]`): all a cache that never served the request's session can hold of
    its prompt, since a session's own blocks reach a cache only through its requests. And per request its origin:
    the request whose ids it takes that run from (itself, or the ancestor it carries the run over from: a parent's
    run carries over to a request that repeats past its end, so only a session's first request, or one repeating
    less, is read)."""
    seen = np.zeros(log.n_ids(), dtype=bool)  # named by an earlier session
    multi = [np.zeros(0, dtype=np.int64)]
    for a, b in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        named = log.ids[log.offsets[a] : log.offsets[b]]  # a session's ids are its requests' new ids
        multi.append(named[seen[named]])  # (an id it repeats is not yet `seen`: read before it is set)
        seen[named] = True
    del seen
    multi_ids = np.unique(np.concatenate(multi))
    lead: list[int] = []
    origin: list[int] = []
    for i, (p, k) in enumerate(zip(log.parent.tolist(), log.shared.tolist(), strict=True)):
        if p >= 0 and k > lead[p]:
            lead.append(lead[p])
            origin.append(origin[p])
            continue
        other = np.isin(log.new(i), multi_ids)
        lead.append(k + (int(other.argmin()) if not other.all() else len(other)))
        origin.append(i)
    return np.array(lead, dtype=np.int64), np.array(origin, dtype=np.int64)


def from_parts(parent: np.ndarray, shared: np.ndarray, new: list[np.ndarray]) -> BlockLog:
    counts = np.array([len(n) for n in new], dtype=np.int64)
    ids = np.concatenate(new).astype(np.int64) if new else np.zeros(0, dtype=np.int64)
    return BlockLog(np.asarray(parent, dtype=np.int64), np.asarray(shared, dtype=np.int64),
                    np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), ids)


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading ids two lists share."""
    n = min(len(a), len(b))
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


class LogWriter:
    """Appends requests given as full lists, each logged against the previous one of its session."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.shared: list[int] = []
        self.new: list[np.ndarray] = []
        self._last: dict[int, tuple[int, np.ndarray]] = {}

    def append(self, session: int, ids: np.ndarray) -> None:
        prev = self._last.get(session)
        k = common_prefix(prev[1], ids) if prev is not None else 0
        self.parent.append(prev[0] if k else NO_PARENT)
        self.shared.append(k)
        self.new.append(ids[k:].copy())  # a view would keep the whole list alive
        self._last[session] = (len(self.parent) - 1, ids)

    def log(self) -> BlockLog:
        return from_parts(np.array(self.parent, dtype=np.int64), np.array(self.shared, dtype=np.int64), self.new)


def from_lists(session: np.ndarray, lists) -> BlockLog:
    """The log of requests given as full lists (in trace order)."""
    w = LogWriter()
    for s, ids in zip(session.tolist(), lists, strict=True):
        w.append(s, np.asarray(ids, dtype=np.int64))
    return w.log()


def from_flat(session: np.ndarray, offsets: np.ndarray, ids: np.ndarray) -> BlockLog:
    """The log of a flat layout (offsets [R+1] into ids): what version-1 trace files hold."""
    if len(offsets) != len(session) + 1 or (len(offsets) and (offsets[0] != 0 or offsets[-1] != len(ids))):
        raise ValueError("trace field block_offsets: does not span block_ids")
    return from_lists(session, (ids[offsets[i] : offsets[i + 1]] for i in range(len(session))))
