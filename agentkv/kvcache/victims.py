"""A tier's next eviction victims, known in advance, so that eviction need not scan the whole tier every time.

Valid only for policies whose eviction keys are the stored keys and only rise while a block is resident (LRU,
LFU, cost-aware: `exact_for`). A scan keeps every unpinned resident keyed at or below the m-th lowest unpinned key
(the `ceiling`), sorted by key. Later an unpinned block entering the tier, or a block as it is unpinned (the core
offers every one), joins if keyed at or below the ceiling; entries found pinned leave; a resident's key only rises,
so one outside never falls to the ceiling. Hence every unpinned resident outside the queue ranks above every entry,
and while the queue (with the incoming blocks keyed at or below the ceiling) covers the k victims wanted, the k
lowest of it are exactly the k lowest of the whole tier (`ranking.lowest` breaks the last ties by id, so the order
of the candidates does not matter). When it runs short, the tier is scanned again (the lowest tenth of it is kept: `KVCache`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from agentkv.kvcache.policy import Policy


def exact_for(policy: Policy) -> bool:
    """Whether a victim queue chooses exactly as a full scan for this policy (see the module docstring)."""
    return policy.keys_only_rise and type(policy).keys is Policy.keys


@dataclass(slots=True)
class VictimQueue:
    ids: np.ndarray = field(default_factory=lambda: _NONE)  # the scan's entries, by key ascending
    keys: np.ndarray = field(default_factory=lambda: _NONE.astype(np.float64))  # their keys then
    head: int = 0  # entries before it have left the tier or risen
    joined: np.ndarray = field(default_factory=lambda: _NONE)  # entries that joined since, unordered
    ceiling: float = -np.inf  # nothing known yet: the first eviction scans

    def offer(self, slots: np.ndarray, key: np.ndarray) -> None:
        """Unpinned blocks entering the tier or just unpinned: those keyed at or below the ceiling join."""
        join = slots[key[slots] <= self.ceiling]
        if len(join):
            self.joined = np.concatenate([self.joined, join])

    def candidates(self, want: int, where: np.ndarray, bit: np.uint8, key: np.ndarray,
                   pins: np.ndarray) -> tuple[np.ndarray, float]:
        """(unpinned entries, bound): every unpinned resident keyed at or below `bound` is among them, so when
        at least `want` of them (and of the blocks arriving) are keyed at or below it, the `want` lowest of the
        tier are too. Reads the scan's entries from the head until `want` are found, then through the ties.
        Entries read that are pinned leave the queue as dead ones do (the core offers every block it unpins
        again): on the GPU tier a returning session's prefix is pinned at the low key of its last release, and
        would otherwise be read again by every eviction while its request runs."""
        j = self.joined
        self.joined = j = np.unique(j[((where[j] & bit) != 0) & (key[j] <= self.ceiling) & (pins[j] == 0)])
        ids, keys = self.ids, self.keys

        def usable(w: slice) -> np.ndarray:  # still in the tier, key as at the scan, unpinned
            return ((where[ids[w]] & bit) != 0) & (key[ids[w]] == keys[w]) & (pins[ids[w]] == 0)

        while self.head < len(ids) and not usable(slice(self.head, self.head + 1))[0]:
            step = slice(self.head, min(len(ids), self.head + 256))
            a = usable(step)
            self.head += int(np.argmax(a)) if a.any() else len(a)
        end = self.head + want
        while True:
            end = min(len(ids), end)
            if self.head < end < len(ids):  # through the ties; sorted from the head on (before it: entries read)
                end = self.head + int(np.searchsorted(keys[self.head :], keys[end - 1], side="right"))
            w = slice(self.head, end)
            use = usable(w)
            found = ids[w][use]
            if len(found) + len(j) >= want or end >= len(ids):
                break
            end = self.head + 2 * (end - self.head) + want
        bound = float(keys[end - 1]) if 0 < end < len(ids) else self.ceiling
        kept = end - len(found)  # the usable entries close up at the window's end, in key order
        keys[kept:end] = keys[w][use]
        ids[kept:end] = found
        self.head = kept
        return (np.unique(np.concatenate([found, j])) if len(j) else found), bound  # entries are unique

    def refill(self, residents: np.ndarray, keys: np.ndarray, pins: np.ndarray, m: int) -> None:
        """After a scan of the tier (`keys` of `residents`): keep every unpinned resident keyed at or below the
        m-th lowest unpinned key (all of them when fewer than m are unpinned); pinned ones join when unpinned."""
        free = pins == 0
        unpinned = keys[free]
        self.ceiling = np.inf if m >= len(unpinned) else float(np.partition(unpinned, m - 1)[m - 1])
        kept = np.flatnonzero((keys <= self.ceiling) & free)
        order = kept[np.argsort(keys[kept], kind="stable")]
        self.ids, self.keys, self.head, self.joined = residents[order], keys[order], 0, _NONE


_NONE = np.zeros(0, dtype=np.int64)
