"""What a cache policy decides, and nothing else: which blocks matter most.

The core (`KVCache`) owns capacity, tiers, pins and moves. A policy only ranks blocks: when a request releases
its blocks it may score them (`on_release`), and when room is needed it gives each candidate an eviction key
(`keys`): lowest evicted first, ties evicted deepest first. The core keeps every key chain-monotone (a block's
key is never below its descendants'), so eviction never strands a cached suffix whose prefix is gone. A
policy may also propose prefetches (`prefetch`), which the core carries out only where it has room or can
evict blocks ranked lower.
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from agentkv.kvcache.snapshots import Snapshot, snapshot_points


@dataclass(slots=True)
class AccessContext:
    """Who touched the blocks and when. `request` is the request's position in an offline replay (used only
    by offline reference policies)."""

    now: float
    session: int = -1
    tenant: int = 0
    request: int = -1
    finish: int = 0  # how the released request's reply ended (agentkv.workload.trace.FINISH_*)
    output_tokens: int = 0  # the released request's reply length (0: unknown)


class Policy(ABC):
    name: str = "policy"
    # A released chain's keys never lower what a block already has: a parent shared by two branches keeps the
    # higher of their keys, so it never ranks below a child of either. Policies whose keys are monotone across
    # branches by construction, but must fall (Belady: the next use moves later), set this False.
    keys_only_rise: bool = True
    # `keys` depends on the time it is asked at (a predicted return): a full lower tier then makes room ahead,
    # as tier 0 always does, instead of keying every resident at each demotion
    keys_move_with_time: bool = False
    # linear-attention layers' state is kept at every this many block boundaries (besides a prompt's end and a
    # reply's latest boundary: `kvcache/snapshots.py`); 0: only those
    snapshot_every: int = 8

    def bind(self, cache: KVCache) -> None:  # noqa: F821 (forward reference to the core)
        """Called once by the core; policies that keep per-block state size it from `cache.n_slots`. The core
        owns its policy, so the policy's way back is weak: no cycle, and a dropped core is freed at once."""
        self.cache = weakref.proxy(cache)

    def grow(self, n_slots: int) -> None:
        """The core's per-block arrays now hold `n_slots` ids; grow any of the policy's own."""

    def forget(self, slots: np.ndarray) -> None:
        """These ids will stand for other blocks from now on: reset any per-block state kept for them."""

    def forget_session(self, session: int) -> None:
        """This session number will stand for another session from now on: reset any per-session state."""

    def classify(self, session: int, finish: int) -> None:
        """`session`'s last reply ended this way (FINISH_*), learned after it released its blocks with
        `ctx.finish` unknown (a server knows only once it has parsed the reply's tool calls)."""

    def on_acquire(self, hits: np.ndarray, ctx: AccessContext) -> None:
        """A request of `ctx.session` arrived and pinned the cached prefix `hits` (a session's return)."""

    @abstractmethod
    def on_release(self, slots: np.ndarray, depth: np.ndarray, ctx: AccessContext) -> np.ndarray | float:
        """A request released its chain `slots` (head to tail): return their raw keys (the core makes them
        chain-monotone), or one float key for them all."""

    def keys(self, slots: np.ndarray, now: float) -> np.ndarray:
        """Eviction keys of candidate `slots` at time `now` (default: the stored keys)."""
        return self.cache.key[slots]

    def on_evict(self, keys: np.ndarray) -> None:
        """The keys of blocks the core is evicting from the GPU tier (aging policies track them)."""

    def prefetch(self, now: float) -> list[np.ndarray]:
        """Chains (head to tail) worth bringing back to the GPU tier now, most urgent first."""
        return []

    def snapshots(self, start: int, end: int, prompt_len: int, block_size: int) -> list[Snapshot]:
        """Block boundaries of a span [start, end) a sequence computes now where the linear layers' state is kept
        (a later prefix hit there restores it instead of recomputing from an earlier one)."""
        return snapshot_points(start, end, prompt_len, block_size, self.snapshot_every)


def chain_monotone(raw: np.ndarray) -> np.ndarray:
    """Keys where no block ranks below a block after it in the chain (a parent is reused whenever its child is).
    Keys that already are (LRU's: one value a chain) come back as they are: a check costs a tenth of the pass back."""
    if len(raw) < 2 or (raw[:-1] >= raw[1:]).all():
        return raw
    return np.maximum.accumulate(raw[::-1])[::-1]
