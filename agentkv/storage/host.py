"""Host DRAM as a tier: one preallocated slab of pages (pinned when a GPU is used), not an allocation per block.

In-process, so pages are trusted: keyed by digest, no checksums. Capacity is the policy core's (it never
places more blocks here than the tier holds); a full slab is a bug, reported as such.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from agentkv.storage.base import BlockKey, TierStore


class HostSlab(TierStore):
    name = "dram"

    def __init__(self, capacity_blocks: int, page_bytes: int, pin: bool) -> None:
        self.page_bytes = page_bytes
        self.slab = torch.empty(capacity_blocks, page_bytes, dtype=torch.uint8, pin_memory=pin)
        self.row_of: dict[bytes, int] = {}
        self.free = list(range(capacity_blocks - 1, -1, -1))

    def put(self, keys: Sequence[BlockKey], pages: torch.Tensor) -> None:
        rows = []
        for k in keys:
            row = self.row_of.get(k.digest)
            if row is None:
                if not self.free:
                    raise RuntimeError("host slab full: the policy core placed more blocks than the tier holds")
                row = self.row_of[k.digest] = self.free.pop()
            rows.append(row)
        if rows:
            self.slab[torch.tensor(rows)] = pages.to("cpu", non_blocking=False)

    def get(self, keys: Sequence[BlockKey], out: torch.Tensor) -> np.ndarray:
        rows = [self.row_of.get(k.digest, -1) for k in keys]
        found = np.array([r >= 0 for r in rows], dtype=bool)
        if found.any():
            idx = np.flatnonzero(found)
            out[torch.from_numpy(idx).to(out.device)] = self.slab[[rows[i] for i in idx]].to(out.device)
        return found

    def drop(self, keys: Sequence[BlockKey]) -> None:
        for k in keys:
            row = self.row_of.pop(k.digest, None)
            if row is not None:
                self.free.append(row)

    def contains(self, keys: Sequence[BlockKey]) -> np.ndarray:
        return np.array([k.digest in self.row_of for k in keys], dtype=bool)
