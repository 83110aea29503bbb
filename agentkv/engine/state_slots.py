"""The linear-attention layers' state slots: a page group whose "pages" are fixed-size per-sequence states.

A gated DeltaNet layer (Qwen3-Next) keeps per sequence a conv state and a recurrent state whatever the context
(`model/deltanet.py`), as `kvcache/sizing.py`'s `state_bytes` prices them (one slot: every linear layer's state,
a row of a uint8 slab with typed views per layer, so a snapshot is one row copy). Each running sequence holds
one live slot; the pool's full-attention layers keep their pages.

Prefix caching: a hit at block boundary B needs the state after exactly B blocks. The policy says at which
boundaries of each span a sequence computes a state is kept (`Policy.snapshots`, torch-free); they are
copied into snapshot slots during the forward pass and named by the key of the block they end once the
scheduler names that block. A prefill whose live state is not at its start (an admission with a hit, a
re-admission after a preemption) restores the snapshot at the deepest boundary at or before its start and
recomputes from there (block 0, a zero state, at worst): a wrong state is never served. Snapshots stay on the
device (least recently used evicted first); they do not travel with pages to lower tiers, so a hit reloaded
from DRAM, disk or Redis restores a snapshot if one is still here and otherwise recomputes from the last one.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from agentkv.engine.sequence import EngineSequence, rewind
from agentkv.kvcache.ids import BlockIds
from agentkv.kvcache.policy import Policy
from agentkv.model.config import ModelConfig
from agentkv.model.deltanet import StateSpan, StateStep, state_slot_bytes, state_views
from agentkv.scheduler import Allocate, Free, Name, Op, StepPlan
from agentkv.scheduler.plan import PrefillChunk
from agentkv.storage.base import BlockKey


@dataclass(slots=True)
class Held:
    """A running sequence's slots: its live state (after `at` tokens; -1: not restored yet), the snapshots taken
    but not yet named (by block), and its `latest` snapshot's block (and key once named), dropped when a newer
    one is taken."""

    slot: int
    at: int = -1
    pending: dict[int, int] = field(default_factory=dict)
    latest: int = 0
    latest_key: BlockKey | None = None


class StateSlots:
    def __init__(self, cfg: ModelConfig, num_slots: int, max_seqs: int, dtype: torch.dtype, device: torch.device,
                 ids: BlockIds, block_size: int, policy: Policy) -> None:
        self.slot_bytes = state_slot_bytes(cfg, dtype)
        self.slab = torch.zeros(num_slots, self.slot_bytes, dtype=torch.uint8, device=device)
        self.step = StateStep()
        self.layers = state_views(cfg, self.slab, dtype, self.step)
        self.ids, self.bs, self.policy, self.max_seqs = ids, block_size, policy, max_seqs
        self.free = list(range(num_slots - 1, -1, -1))
        self.slot_of: dict[BlockKey, int] = {}  # named snapshots by the key of the block they end
        self.key_at: list[BlockKey | None] = [None] * num_slots
        self.idle: OrderedDict[int, None] = OrderedDict()  # named snapshots, least recently used first
        self.held: dict[int, Held] = {}  # by sequence id
        self.restored_tokens = 0  # cached tokens served by a snapshot
        self.rewound_tokens = 0  # cached tokens recomputed because no snapshot sat at their boundary

    @staticmethod
    def floor(max_seqs: int) -> int:
        """The fewest slots the default takes: a live one per sequence and as many snapshots."""
        return 2 * max_seqs

    @staticmethod
    def slots_for(kv_bytes: int, slot_bytes: int, max_seqs: int, snapshots: int | None = None) -> int:
        """A live slot per sequence and `snapshots` more (None: the floor at least, up to a quarter of the KV
        budget in all). The pages get the rest (the engine checks there are enough)."""
        total = max(StateSlots.floor(max_seqs), kv_bytes // 4 // slot_bytes) if snapshots is None \
            else max_seqs + snapshots
        if (snapshots is not None and snapshots < 0) or total * slot_bytes >= kv_bytes:
            raise ValueError(f"the linear layers' states of max_num_seqs={max_seqs} sequences and their snapshots "
                             f"({total} slots) need {total * slot_bytes} bytes of the {kv_bytes}-byte KV budget: "
                             "lower max_num_seqs or state_snapshots, or give more KV memory")
        return total

    @property
    def nbytes(self) -> int:
        return self.slab.shape[0] * self.slot_bytes

    # ---- the plan's operations, after the pool's --------------------------------------------------------------
    def execute(self, ops: list[Op]) -> None:
        for op in ops:
            seq: EngineSequence = getattr(op, "seq", None)  # type: ignore[assignment]
            if isinstance(op, Allocate) and op.admission:
                self.held[seq.seq_id] = Held(self._take())
            elif isinstance(op, Name) and seq.seq_id in self.held:
                held = self.held[seq.seq_id]
                for i, b in enumerate(op.ids.tolist()):
                    if op.first + i + 1 in held.pending:
                        key = self.ids.keys[b]
                        kept = self._name(held.pending.pop(op.first + i + 1), key)  # type: ignore[arg-type]
                        if kept and held.latest == op.first + i + 1:
                            held.latest_key = key
            elif isinstance(op, Free) and seq.seq_id in self.held:
                held = self.held.pop(seq.seq_id)
                self.free += [held.slot, *held.pending.values()]

    def before_forward(self, plan: StepPlan) -> None:
        """Restore each prefill's state at its start (rewinding to the snapshot found), then say which slots the
        step reads and where its snapshots go."""
        self.step.prefills = []
        for chunk in plan.prefills:
            held = self.held[chunk.seq.seq_id]
            if held.at != chunk.start:
                self._restore(chunk, held)
            self.step.prefills.append(StateSpan(held.slot, chunk.n, self._snapshots(chunk.seq, chunk.start,  # type: ignore[arg-type]
                                                                                  chunk.n, held)))
            held.at = chunk.start + chunk.n
        decodes = [self.held[s.seq_id] for s in plan.decodes]
        self.step.decode_slots = torch.tensor([h.slot for h in decodes], dtype=torch.long,
                                              device=self.slab.device) if decodes else None
        self.step.decode_snapshots = []
        for i, (seq, held) in enumerate(zip(plan.decodes, decodes, strict=True)):
            for _, dest in self._snapshots(seq, seq.computed, 1, held):  # type: ignore[arg-type]
                self.step.decode_snapshots.append((i, dest))
            held.at = seq.computed + 1

    # ---- mechanics ----------------------------------------------------------------------------------------------
    def _restore(self, chunk: PrefillChunk, held: Held) -> None:
        """The live slot takes the state at the deepest named boundary at or before the chunk's start."""
        seq: EngineSequence = chunk.seq  # type: ignore[assignment]
        for b in range(min(chunk.start // self.bs, len(seq.named)), 0, -1):
            slot = self.slot_of.get(self.ids.keys[seq.named[b - 1]])  # type: ignore[arg-type]
            if slot is not None:
                self.slab[held.slot] = self.slab[slot]
                self.idle.move_to_end(slot)
                start = b * self.bs
                break
        else:
            self.slab[held.slot] = 0
            start = 0
        self.restored_tokens += min(start, seq.cached)
        self.rewound_tokens += chunk.start - start
        if start < chunk.start:
            rewind(chunk, start, chunk.n)  # as many tokens as planned: the step's budget holds

    def _snapshots(self, seq: EngineSequence, start: int, n: int, held: Held) -> list[tuple[int, int]]:
        """(offset in the span, destination slot) for each boundary the policy keeps that has no snapshot yet."""
        out = []
        for point in self.policy.snapshots(start, start + n, seq.prompt_len, self.bs):
            b = point.block
            if b <= len(seq.named) and self.ids.keys[seq.named[b - 1]] in self.slot_of:
                continue
            dest = self._take(snapshot=True)
            if dest < 0:
                break
            if point.latest:
                self._drop_latest(held)
                held.latest = b
            held.pending[b] = dest
            out.append((b * self.bs - start, dest))
        return out

    def _drop_latest(self, held: Held) -> None:
        if held.latest in held.pending:
            self.free.append(held.pending.pop(held.latest))
        elif held.latest_key in self.slot_of:
            slot = self.slot_of[held.latest_key]  # type: ignore[index]
            self._forget(slot)
            self.free.append(slot)
        held.latest, held.latest_key = 0, None

    def _take(self, snapshot: bool = False) -> int:
        """A free slot, else the least recently used snapshot's; a snapshot never takes one a live state needs
        (-1: none to spare)."""
        spare = len(self.free) + len(self.idle) - (self.max_seqs - len(self.held))
        if snapshot and spare <= 0:
            return -1
        if self.free:
            return self.free.pop()
        if not self.idle:  # slots_for covers every running sequence: only a sizing bug gets here
            raise RuntimeError("linear-attention state slots exhausted")
        slot = next(iter(self.idle))
        self._forget(slot)
        return slot

    def _name(self, slot: int, key: BlockKey) -> bool:
        """The snapshot in `slot` now stands for `key`'s boundary; False where another kept it first (freed)."""
        if key in self.slot_of:
            self.free.append(slot)
            return False
        self.slot_of[key], self.key_at[slot] = slot, key
        self.idle[slot] = None
        return True

    def _forget(self, slot: int) -> None:
        del self.slot_of[self.key_at[slot]]  # type: ignore[arg-type]
        self.key_at[slot] = None
        self.idle.pop(slot)

    def check(self) -> None:
        """Every slot is free, live, pending or a named snapshot, exactly once."""
        live = [h.slot for h in self.held.values()]
        pending = [s for h in self.held.values() for s in h.pending.values()]
        every = [*self.free, *live, *pending, *self.idle]
        assert sorted(every) == list(range(self.slab.shape[0])), "state slots lost or double-held"
        assert all(self.slot_of[self.key_at[s]] == s for s in self.idle), "a snapshot lost its name"  # type: ignore[index]
