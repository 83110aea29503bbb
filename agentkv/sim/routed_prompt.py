"""A prompt as a simulated fleet looks it up and numbers it, its full list of ids built only when needed.

An agent's next prompt repeats the first `shared` ids of its previous one and adds a few: where that previous
request was numbered on replica `home` (`LocalIds`), home reads the repeated part as the earlier local ids and
looks up only the new ids, so neither routing the prompt home nor numbering it there builds the whole list
(~10^4 ids at a coding agent's context). A replica the session never ran on is asked only when the router cannot
rule it out (`Router`'s bound), and then only about the prompt's lead that other sessions share (all it can hold:
`Trace.lead_in_other_sessions`), kept split by page per session while the lead's origin is the same; a replica
that ran an earlier request of the session, about the full list, split by page once for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agentkv.kvcache.cache import KVCache
from agentkv.sim.local_ids import LocalIds, PagedIds
from agentkv.workload.blocklog import BlockLog

NO_HOME = -1


@dataclass(slots=True)
class RoutedPrompt:
    log: BlockLog
    i: int  # the request
    session: int
    home: int = NO_HOME  # the replica that numbered the request it extends
    earlier: np.ndarray | None = None  # that request's local ids there
    ran: int = -1  # bit r set: replica r served the session (all set: not known)
    lead: int = 0  # leading ids other sessions name, taken from request `origin`
    origin: int = -1
    heads: dict | None = None  # session -> (origin, its first `lead` ids split by page), the fleet's
    _full: PagedIds | None = None
    _new: PagedIds | None = None

    def __len__(self) -> int:
        return int(self.log.shared[self.i] + self.log.offsets[self.i + 1] - self.log.offsets[self.i])

    def full(self) -> PagedIds:
        if self._full is None:
            self._full = PagedIds.of(self.log.blocks(self.i))
        return self._full

    def head(self) -> PagedIds:
        """The prompt's first `lead` ids: its origin's, the same for the session's requests that carry its lead."""
        got = self.heads.get(self.session)
        if got is None or got[0] != self.origin:
            o = self.origin
            first = self.log.new(o) if self.log.parent[o] < 0 else self.log.blocks(o)  # no parent: new is all
            got = self.heads[self.session] = (o, PagedIds.of(first[: self.lead]))
        return got[1]

    def new(self) -> PagedIds:
        if self._new is None:
            self._new = PagedIds.of(self.log.new(self.i))
        return self._new

    def cached_on(self, name: int, ids: LocalIds, cache: KVCache) -> int:
        """The leading blocks replica `name` (its ids and cache) holds: the router's question."""
        if name != self.home:
            seen = ids.seen_prefix(self.full() if self.ran >> name & 1 else self.head())
            return cache.held_prefix(seen) if len(seen) else 0  # most replicas never saw the prompt's head
        repeated = self.earlier[: int(self.log.shared[self.i])]
        held = cache.held_prefix(repeated)
        if held < len(repeated) or not len(self.new().ids):
            return held
        seen = ids.seen_prefix(self.new())
        return held + (cache.held_prefix(seen) if len(seen) else 0)

    def numbered_on(self, name: int, ids: LocalIds) -> np.ndarray:
        """The prompt's local ids on replica `name`, numbering the ids it has not seen (`LocalIds.assign`)."""
        if name == self.home:
            return ids.extend(self.earlier, int(self.log.shared[self.i]), self.new())
        return ids.assign(self.full())
