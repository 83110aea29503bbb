"""Host DRAM as a tier: one preallocated slab of pages (pinned when a GPU is used), not an allocation per block.

In-process, so pages are trusted: keyed by digest with the identity compared (a collision is a miss), no
checksums. Capacity is the policy core's (it never
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
        self.pin = pin
        self.slab = torch.empty(capacity_blocks, page_bytes, dtype=torch.uint8, pin_memory=pin)
        self.slab_rows = _rows(self.slab)
        self.row_of: dict[bytes, tuple[int, bytes]] = {}  # digest -> (row, identity): a collision is a miss
        self.free = list(range(capacity_blocks - 1, -1, -1))

    def put(self, keys: Sequence[BlockKey], pages: torch.Tensor) -> None:
        src = _rows(pages)
        for i, k in enumerate(keys):
            got = self.row_of.get(k.digest)
            if got is None:
                if not self.free:
                    raise RuntimeError("host slab full: the policy core placed more blocks than the tier holds")
                got = self.row_of[k.digest] = (self.free.pop(), k.identity)
            elif got[1] != k.identity:
                continue  # another block under the same digest keeps its page: this one will miss
            _copy(self.slab_rows[got[0]], src[i])

    def get(self, keys: Sequence[BlockKey], out: torch.Tensor) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        dst = _rows(out)
        for i, k in enumerate(keys):
            got = self.row_of.get(k.digest)
            if got is not None and got[1] == k.identity:
                _copy(dst[i], self.slab_rows[got[0]])
                found[i] = True
        return found

    def drop(self, keys: Sequence[BlockKey]) -> None:
        for k in keys:
            got = self.row_of.pop(k.digest, None)
            if got is not None:
                self.free.append(got[0])

    def contains(self, keys: Sequence[BlockKey]) -> np.ndarray:
        return np.array([k.digest in self.row_of for k in keys], dtype=bool)


# Pages move row by row: each row is one long contiguous run. On the CPU numpy copies it at memory bandwidth on
# the calling thread; torch's indexed assignment of wide uint8 rows, or a parallel copy per row, runs several
# times slower (bench.tiers measures the slab against one plain copy of the same bytes).
def _rows(t: torch.Tensor) -> torch.Tensor | np.ndarray:
    return t.numpy() if t.device.type == "cpu" else t


def _copy(dst: torch.Tensor | np.ndarray, src: torch.Tensor | np.ndarray) -> None:
    """Synchronous: a row is reused as soon as it is dropped, so no copy may still be reading it."""
    if isinstance(dst, np.ndarray) and isinstance(src, np.ndarray):
        np.copyto(dst, src)
    else:
        torch.as_tensor(dst).copy_(torch.as_tensor(src))
