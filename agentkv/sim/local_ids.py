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
_NONE = np.zeros(0, dtype=np.int32)
_NONE.flags.writeable = False


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
        page run by page run, stopping at the first unseen id (the router may ask several replicas about one
        prompt, so the prompt is split by page once: `PagedIds`, held by `routed_prompt.RoutedPrompt`)."""
        parts: list[np.ndarray] = []
        for p, a, b in paged.runs:
            table = self.pages.get(p)
            if table is None or table[paged.offsets[a]] == UNSEEN:  # most replicas never saw the prompt's head
                break
            local = table[paged.offsets[a:b]]
            unseen = local == UNSEEN
            if unseen.any():
                parts.append(local[: int(unseen.argmax())])
                break
            parts.append(local)
        return np.concatenate(parts) if parts else _NONE

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
        whole = ascending and len(fresh) == len(ids)  # every id new (a session's next turn): already split
        for p, a, b in paged.runs if whole else _page_runs(fresh):  # a session's new blocks: one run or two
            table = self.pages.get(p)
            if table is None:
                table = self.pages[p] = np.full(PAGE, UNSEEN, dtype=np.int32)
            table[fresh[a:b] & (PAGE - 1)] = numbers[a:b]
        if ascending:
            local[new] = numbers
            return local
        return self.lookup(paged)

    def extend(self, earlier: np.ndarray, shared: int, new: PagedIds) -> np.ndarray:
        """Local ids of a prompt that repeats the first `shared` ids of a prompt numbered here (`earlier`: its local
        ids) and then holds `new` ones: only those are looked up and numbered, as `assign` would number them (the
        repeated ids were seen), so a session's next prompt costs what it adds, not its whole length."""
        if not len(new.ids):
            return earlier[:shared]
        return np.concatenate([earlier[:shared], self.assign(new)])


def _page_runs(ids: np.ndarray) -> list[tuple[int, int, int]]:
    """(page, start, end) of each run of `ids` on one page, in order."""
    if not len(ids):
        return []
    page = ids >> PAGE_BITS
    cuts = [0, *(np.flatnonzero(page[1:] != page[:-1]) + 1).tolist(), len(ids)]
    return [(int(page[a]), a, b) for a, b in pairwise(cuts)]
