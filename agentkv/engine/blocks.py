"""Physical KV blocks, moved exactly as the policy core says.

The core decides (which ids are cached, in which tier, what is evicted or promoted) and keeps the capacity
accounts; this module owns the tensors: a GPU pool of `num_blocks` physical blocks per layer, a host-memory
tier holding demoted blocks, and each running sequence's block table. It applies the core's `MoveBatch`es
(promote, demote, write, drop) and keeps `id → physical block` for the named blocks resident in the pool.
"""

from __future__ import annotations

import torch

from agentkv.kvcache.cache import MoveBatch
from agentkv.scheduler import Sequence


class HostStore:
    """Demoted KV blocks in host memory (pinned when a GPU is used), one tensor per block id."""

    def __init__(self, pin: bool) -> None:
        self.blocks: dict[int, torch.Tensor] = {}
        self.pin = pin

    def put(self, block_id: int, data: torch.Tensor) -> None:
        host = torch.empty(data.shape, dtype=data.dtype, pin_memory=self.pin)
        host.copy_(data, non_blocking=False)
        self.blocks[block_id] = host

    def get(self, block_id: int) -> torch.Tensor:
        return self.blocks[block_id]

    def drop(self, block_id: int) -> None:
        self.blocks.pop(block_id, None)


class BlockPool:
    def __init__(self, num_layers: int, num_blocks: int, block_size: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        shape = (num_layers, 2, num_blocks, block_size, kv_heads, head_dim)
        self.kv = torch.zeros(shape, dtype=dtype, device=device)
        self.block_size = block_size
        self.free = list(range(num_blocks - 1, -1, -1))
        self.slot_of: dict[int, int] = {}  # named block id -> physical block in the pool
        self.id_of: dict[int, int] = {}  # physical block -> named block id
        self.tables: dict[int, list[int]] = {}  # sequence -> its physical blocks, in order
        self.host = HostStore(pin=device.type == "cuda")

    @property
    def num_blocks(self) -> int:
        return self.kv.shape[2]

    def layer_caches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(self.kv[i, 0], self.kv[i, 1]) for i in range(self.kv.shape[0])]

    # ---- the core's moves ----------------------------------------------------------------------------------
    def apply(self, moves: list[MoveBatch]) -> None:
        for mv in moves:
            for b in mv.blocks.tolist():
                if mv.kind == "promote":
                    slot = self.free.pop()
                    self.kv[:, :, slot] = self.host.get(b).to(self.kv.device)
                    self._name(slot, b)
                elif mv.kind in ("demote", "write"):
                    data = self.kv[:, :, self.slot_of[b]] if mv.src == 0 else self.host.get(b)
                    self.host.put(b, data)
                    if mv.kind == "demote" and mv.src == 0:
                        self._release_slot(self.slot_of.pop(b))
                elif mv.src == 0:  # drop from the pool
                    self._release_slot(self.slot_of.pop(b))
                else:  # drop from the host tier
                    self.host.drop(b)

    # ---- sequences -----------------------------------------------------------------------------------------
    def sync(self, seq: Sequence, hit_ids: list[int]) -> None:
        """Make the sequence's table cover what the core holds for it: its cached prefix, then fresh blocks."""
        table = self.tables.get(seq.seq_id)
        if table is None:
            table = self.tables[seq.seq_id] = [self.slot_of[b] for b in hit_ids]
        while len(table) < seq.blocks_held:
            table.append(self.free.pop())

    def name(self, seq: Sequence, first: int, ids: list[int]) -> None:
        """Blocks first.. of the sequence now carry `ids` (their KV is written). A block another request wrote
        meanwhile keeps its own copy; this sequence's stays anonymous and is freed with it."""
        table = self.tables[seq.seq_id]
        for i, b in enumerate(ids):
            if b not in self.slot_of:
                self._name(table[first + i], b)

    def drop_sequence(self, seq: Sequence) -> None:
        """The core released the sequence: free its blocks that carry no id (named ones stay cached)."""
        for slot in self.tables.pop(seq.seq_id, []):
            if slot not in self.id_of:
                self.free.append(slot)

    def slots(self, seq: Sequence, start: int, end: int) -> torch.Tensor:
        """Flat slots (block * block_size + offset) of positions start..end-1."""
        table = torch.tensor(self.tables[seq.seq_id], dtype=torch.long, device=self.kv.device)
        pos = torch.arange(start, end, device=self.kv.device)
        return table[pos // self.block_size] * self.block_size + pos % self.block_size

    def _name(self, slot: int, block_id: int) -> None:
        self.slot_of[block_id] = slot
        self.id_of[slot] = block_id

    def _release_slot(self, slot: int) -> None:
        """An evicted block: the core never evicts what a running sequence pins, so no table points here."""
        del self.id_of[slot]
        self.free.append(slot)
