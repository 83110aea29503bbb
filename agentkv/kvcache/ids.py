"""Dense, recycled ids for the engine's blocks: the core indexes its arrays by id, the engine finds blocks by key.

A key's 128-bit digest only finds a candidate. The id is then checked against what it stands for (its parent's
digest, or the namespace's for a first block, and its own tokens); a digest seen again with other content gets
a private id that no lookup can find, so the cache misses and recomputes instead of serving another prompt's
KV. By induction equal ids mean equal prefixes, token for token.

Ids are reference-counted by the live requests that name them. An id no request holds and no tier caches is
recycled (its slot in the core's arrays is reset first), so a long-running engine keeps at most
(blocks cached in all tiers + blocks named by live requests) ids, whatever it has served.
"""

from __future__ import annotations

from collections.abc import Iterable

from agentkv.kvcache.block_hash import BlockKey


class BlockIds:
    def __init__(self) -> None:
        self._by_digest: dict[bytes, int] = {}
        self.keys: list[BlockKey | None] = []  # what each id stands for (None: free)
        self.refs: list[int] = []  # live requests naming it
        self._free: list[int] = []
        self.collisions = 0

    def __len__(self) -> int:
        """Ids in use."""
        return len(self.keys) - len(self._free)

    @property
    def capacity(self) -> int:
        """The highest id ever handed out, plus one: what the core's arrays are sized by."""
        return len(self.keys)

    def name(self, key: BlockKey) -> int:
        """The id of the block `key` stands for, with one more reference."""
        found = self._by_digest.get(key.digest)
        known = self.keys[found] if found is not None else None
        if known is not None and known.identity == key.identity:
            self.refs[found] += 1  # type: ignore[index]
            return found  # type: ignore[return-value]
        new = self._free.pop() if self._free else len(self.keys)
        if new == len(self.keys):
            self.keys.append(key)
            self.refs.append(1)
        else:
            self.keys[new], self.refs[new] = key, 1
        if found is None:
            self._by_digest[key.digest] = new
        else:
            self.collisions += 1  # a private id: this content is computed, never matched to the other's KV
        return new

    def unref(self, ids: Iterable[int]) -> list[int]:
        """Drop one reference from each id; returns those no request holds any more."""
        out = []
        for i in ids:
            self.refs[i] -= 1
            if self.refs[i] == 0:
                out.append(i)
        return out

    def recycle(self, i: int) -> None:
        """Forget id i (no request holds it, no tier caches it): its number is handed out again."""
        key = self.keys[i]
        assert key is not None and self.refs[i] == 0, f"id {i} is still in use"
        if self._by_digest.get(key.digest) == i:
            del self._by_digest[key.digest]
        self.keys[i] = None
        self._free.append(i)
