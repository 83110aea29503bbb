"""The ids resident in one tier of the policy core (`cache.KVCache`): what a full scan of the tier reads."""

from __future__ import annotations

import numpy as np


class Members:
    """The ids resident in one tier, as an append-only buffer cleaned lazily (departures only clear a bit)."""

    def __init__(self) -> None:
        self.buf = np.empty(1024, dtype=np.int64)
        self.n = 0

    def add(self, slots: np.ndarray) -> None:
        need = self.n + len(slots)
        if need > len(self.buf):
            self.buf = np.resize(self.buf, max(need, 2 * len(self.buf)))
        self.buf[self.n : need] = slots
        self.n = need
