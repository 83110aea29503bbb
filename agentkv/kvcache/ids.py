"""Dense ids for the engine's blocks: the core indexes its arrays by block id, the engine finds blocks by hash.

A hash only finds a candidate. The id is then checked against what it stands for (its parent's id, or the
namespace salt for a first block, and its own tokens); a hash seen again with other content (a 64-bit
collision, about one in 2^64 per pair of blocks, so likely somewhere among billions) gets a fresh id that no
lookup can find. The cache then misses and recomputes instead of serving another prompt's KV, and by
induction equal ids mean equal prefixes, token for token.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class BlockIds:
    """Ids are not reused, so a long-running engine grows this map (and the core's per-id arrays) by one entry,
    and the block's token ids, per distinct block it has ever seen."""

    def __init__(self) -> None:
        self._by_hash: dict[int, int] = {}
        self._content: list[bytes] = []  # what each id stands for
        self.collisions = 0

    def __len__(self) -> int:
        return len(self._content)

    def name(self, block_hash: int, parent: int | None, salt: int, tokens: Sequence[int]) -> int:
        """The id of the block holding `tokens` after the block `parent` (None: first block of namespace `salt`)."""
        head = b"P" + parent.to_bytes(8, "little") if parent is not None else b"S" + salt.to_bytes(8, "little", signed=True)
        content = head + np.asarray(tokens, dtype=np.int32).tobytes()
        found = self._by_hash.get(block_hash)
        if found is not None and self._content[found] == content:
            return found
        new = len(self._content)
        self._content.append(content)
        if found is None:
            self._by_hash[block_hash] = new
        else:
            self.collisions += 1  # a private id: this content is computed, never matched to the other's KV
        return new
