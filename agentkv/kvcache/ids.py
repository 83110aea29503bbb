"""Dense ids for content hashes: the core indexes its arrays by block id, the engine names blocks by hash."""

from __future__ import annotations

import numpy as np


class BlockIds:
    """hash → dense id, assigned on first sight. Ids are not reused, so a long-running engine grows this
    map (and the core's per-id arrays) by one entry per distinct block it has ever seen."""

    def __init__(self) -> None:
        self._ids: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self, hashes: np.ndarray) -> np.ndarray:
        table = self._ids
        out = np.empty(len(hashes), dtype=np.int64)
        for i, h in enumerate(hashes.tolist()):
            out[i] = table.setdefault(h, len(table))
        return out
