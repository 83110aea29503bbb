"""A replica's own block ids: the global ids it has seen, renumbered densely in the order it saw them.

The policy core sizes its per-block arrays by the largest id it is given. Given the trace's ids, every replica of
a fleet would hold arrays for every block of the trace (a whole-trace report with tens of replicas: gigabytes per
simulation); renumbered, a replica's arrays follow the blocks routed to it. The map from global ids is paged
(pages allocated where a replica sees an id): a request's ids lie in a few ascending runs (its agent's prompt,
its session's blocks), so a lookup is a handful of numpy slices.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np

PAGE_BITS = 12
PAGE = 1 << PAGE_BITS
UNSEEN = -1


@dataclass(slots=True)
class PagedIds:
    """A prompt's ids split by page: (page, start, end) runs and each id's offset in its page."""

    ids: np.ndarray
    runs: list[tuple[int, int, int]]
    offsets: np.ndarray

    @classmethod
    def of(cls, ids: np.ndarray) -> PagedIds:
        return cls(ids, _page_runs(ids), ids & (PAGE - 1))


class LocalIds:
    def __init__(self) -> None:
        self.pages: dict[int, np.ndarray] = {}  # global page -> int32 local ids (UNSEEN where none yet)
        self.n = 0

    def lookup(self, paged: PagedIds) -> np.ndarray:
        """Local ids of a prompt's ids, UNSEEN where this replica never saw one."""
        out = np.full(len(paged.ids), UNSEEN, dtype=np.int64)
        for p, a, b in paged.runs:
            table = self.pages.get(p)
            if table is not None:
                out[a:b] = table[paged.offsets[a:b]]
        return out

    def seen_prefix(self, paged: PagedIds) -> np.ndarray:
        """The local ids of the leading run of a prompt's ids this replica has seen (what its cache could hold):
        page run by page run, stopping at the first unseen id (the router asks every replica for every prompt,
        so the prompt is split by page once: `PagedIds`)."""
        parts: list[np.ndarray] = []
        for p, a, b in paged.runs:
            table = self.pages.get(p)
            if table is None:
                break
            local = table[paged.offsets[a:b]]
            unseen = local == UNSEEN
            if unseen.any():
                parts.append(local[: int(unseen.argmax())])
                break
            parts.append(local)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def assign(self, paged: PagedIds) -> np.ndarray:
        """Local ids of a prompt's ids, numbering the unseen ones (in order of first appearance)."""
        ids = paged.ids
        local = self.lookup(paged)
        new = local == UNSEEN
        if not new.any():
            return local
        fresh = ids[new]
        ascending = len(fresh) == 1 or bool((fresh[1:] > fresh[:-1]).all())  # a session's new blocks: no repeats
        if not ascending:
            fresh, first = np.unique(fresh, return_index=True)
            fresh = fresh[np.argsort(first, kind="stable")]
        numbers = np.arange(self.n, self.n + len(fresh), dtype=np.int32)
        self.n += len(fresh)
        page = fresh >> PAGE_BITS
        for p in np.unique(page).tolist():
            on = page == p
            table = self.pages.get(p)
            if table is None:
                table = self.pages[p] = np.full(PAGE, UNSEEN, dtype=np.int32)
            table[fresh[on] & (PAGE - 1)] = numbers[on]
        if ascending:
            local[new] = numbers
            return local
        return self.lookup(paged)


class SeenBy:
    """Which replicas of a fleet (up to 64) have seen each global id, a bit per replica in pages as `LocalIds`: an
    upper bound on the prompt prefix every replica's cache can hold, found for the whole fleet in one pass, so the
    router asks only the replicas that bound leaves in the running (`router.Router.pick`)."""

    def __init__(self, replicas: int) -> None:
        if not 0 < replicas <= MAX_SEEN_BY:
            raise ValueError(f"SeenBy tracks 1 to {MAX_SEEN_BY} replicas, not {replicas}")
        self.replicas = replicas
        self.dtype = next(t for t in (np.uint8, np.uint16, np.uint32, np.uint64) if np.iinfo(t).bits >= replicas)
        self.pages: dict[int, np.ndarray] = {}

    def mark(self, paged: PagedIds, replica: int) -> None:
        bit = self.dtype(1 << replica)
        for p, a, b in paged.runs:
            table = self.pages.get(p)
            if table is None:
                table = self.pages[p] = np.zeros(PAGE, dtype=self.dtype)
            table[paged.offsets[a:b]] |= bit

    def prefixes(self, paged: PagedIds) -> list[int]:
        """For each replica, how many of the prompt's leading ids it has seen."""
        parts: list[np.ndarray] = []
        for p, a, b in paged.runs:
            table = self.pages.get(p)
            if table is None:
                break
            parts.append(table[paged.offsets[a:b]])
        seen = [0] * self.replicas
        if not parts:
            return seen
        run = np.bitwise_and.accumulate(np.concatenate(parts))  # bit r stays set while replica r saw every id
        ends = [*(np.flatnonzero(run[1:] != run[:-1]) + 1).tolist(), len(run)]
        starts = [0, *ends[:-1]]
        for a, b in zip(starts, ends, strict=True):
            lost = int(run[a]) & ~(int(run[b]) if b < len(run) else 0)
            while lost:
                r = (lost & -lost).bit_length() - 1
                seen[r] = b
                lost &= lost - 1
        return seen


MAX_SEEN_BY = 64


def _page_runs(ids: np.ndarray) -> list[tuple[int, int, int]]:
    """(page, start, end) of each run of `ids` on one page, in order."""
    if not len(ids):
        return []
    page = ids >> PAGE_BITS
    cuts = [0, *(np.flatnonzero(page[1:] != page[:-1]) + 1).tolist(), len(ids)]
    return [(int(page[a]), a, b) for a, b in pairwise(cuts)]
