"""The KV cache policy core: which blocks are cached, in which tier, and what moves when. Ids and sizes only.

Blocks are dense integer ids (see `BlockIds` for callers holding content hashes). A block id stands for its
tokens and everything before them, so a request can reuse the leading run of its blocks that some tier holds.
Tier 0 is where attention runs (GPU HBM); lower tiers (host DRAM, local disk, a remote store) hold copies.

Life of a request (the engine and the simulator drive the same calls):
- `acquire(key, ids, n_blocks, ctx)`: pins the leading run of `ids` (the request's full blocks) that is cached,
  promoting blocks found only in lower tiers to tier 0, and reserves tier-0 blocks for the rest of the
  `n_blocks` the request needs (what must be computed, partial last block included); evicts as needed.
  Returns a `Grant` with the hits per tier and the moves to perform, or None when tier 0 cannot make room
  even by evicting everything unpinned (the scheduler waits or preempts).
- `reserve(key, n)`: more tier-0 blocks for a running request (decode filling new blocks).
- `commit(key, ids)`: names reserved blocks once their KV is written (their ids are known then).
- `release(key, ctx)`: unpins; the policy scores the chain; the blocks stay cached until evicted.
- `tick(now, at_hand)`: the policy's prefetches, carried out where there is room (and the data is at hand).

Partial blocks: only full blocks have ids and can be shared. A request's partial last block is reserved,
written and freed at release, never cached (as in vLLM and SGLang): up to block_size − 1 tokens per request
are always recomputed.

Eviction from tier t demotes a block to tier t+1 unless t+1 already holds a copy (then it is just dropped
from t); from the last tier it is dropped. A block a tier below t+1 holds still goes to t+1 if it earns a
place there (a block promoted from disk goes back to DRAM), else it is dropped from t, its copy kept. Blocks
arriving in a full tier compete with its residents by key, so a demotion never displaces a block the policy
values more. In write-through mode committed blocks are also copied to tier 1 at once, so later GPU
evictions are free drops.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from agentkv.kvcache.members import Members
from agentkv.kvcache.moves import CacheStats, Grant, MoveBatch
from agentkv.kvcache.policy import AccessContext, Policy, chain_monotone
from agentkv.kvcache.ranking import found, held_run, lowest, lowest_bit
from agentkv.kvcache.tiers import TierSpec
from agentkv.kvcache.victims import VictimQueue, exact_for

NEVER = -np.inf  # the key of a block that has never been released
MAX_HOLDERS = 32_000  # requests holding blocks at once: a block's pins fit int16 (half a GB less at 10^8 blocks)
_NONE = np.zeros(0, dtype=np.int64)
AtHand = Callable[[int, np.ndarray], np.ndarray]  # (tier, ids) -> which can move up now


@dataclass(slots=True)
class _Held:
    chain: list[np.ndarray]  # named blocks pinned for the request, head to tail
    reserved: int  # anonymous tier-0 blocks (being written, or partial)
    named: int  # blocks in `chain`: the depth of the next one committed


class KVCache:
    def __init__(self, tiers: Sequence[TierSpec], policy: Policy, write_through: bool = False,
                 evict_ahead: int | None = None, max_ids: int | None = None) -> None:
        """evict_ahead: when tier 0 must evict, free this many blocks more than needed, so that a stream of
        one-block decode reservations does not scan the tier every step (default: 0.5% of tier 0, the same for
        every driver — engine, simulator and offline replay; 0: evict exactly what is needed; 2% cost the
        agent-aware policy a fifth of its gain at 256k tokens, `bench.policy_headroom`). Lower tiers make room 2%
        ahead where the policy's keys move with time (no exact victim queue: every scan keys the whole tier, ~5 ms
        at 10^6 blocks), else not at all. max_ids: where the driver knows how many ids it can give (a simulation:
        its trace's), the per-block arrays never grow past it."""
        if not tiers:
            raise ValueError("a cache needs at least one tier")
        if len(tiers) > 8:
            raise ValueError("at most 8 tiers")
        self.tiers = list(tiers)
        self.capacity = np.array([t.capacity_blocks for t in tiers], dtype=np.int64)
        self.used = np.zeros(len(tiers), dtype=np.int64)
        self.reserved = 0
        self.write_through = write_through and len(tiers) > 1
        self.ahead = self.capacity // 50 * policy.keys_move_with_time  # per tier; tier 0's is below
        self.ahead[0] = self.capacity[0] // 200 if evict_ahead is None else evict_ahead
        self.policy = policy
        self.n_slots = 0
        self.max_ids = max_ids
        self.where = np.zeros(0, dtype=np.uint8)  # bit t set: tier t holds the block
        self.listed = np.zeros(0, dtype=np.uint8)  # bit t set: the block is in tier t's member buffer
        self.pins = np.zeros(0, dtype=np.int16)  # at most one pin a holder, and MAX_HOLDERS holders (`acquire`)
        self.depth = np.zeros(0, dtype=np.int32)
        self.key = np.zeros(0, dtype=np.float64)  # stored keys; none where they move with time (`policy.keys`)
        self._stores_keys = not policy.keys_move_with_time
        self._members = [Members() for _ in tiers]
        # each tier's next victims, where they can be known exactly in advance (else every eviction scans the tier:
        # ~4 ms at 460k GPU blocks, a DeepSeek-V4-Flash replica's)
        self._victims = [VictimQueue() for _ in tiers] if exact_for(policy) else None
        self._victims_ahead = np.maximum(self.capacity // 10, 1)
        self._held: dict[Hashable, _Held] = {}
        self.releases = 0  # room can only appear when a request lets go: a cheap "worth retrying" signal
        self.stats = CacheStats(len(tiers))
        policy.bind(self)

    # ---- queries -------------------------------------------------------------------------------------------
    def lookup(self, ids: np.ndarray) -> tuple[int, np.ndarray]:
        """(length of the leading run of `ids` held by some tier, best tier of each block of that run)."""
        ids = np.asarray(ids, dtype=np.int64)
        self._ensure(ids)
        n, tier, _ = found(self.where[ids], len(self.tiers))
        return n, tier

    def held_prefix(self, ids: np.ndarray) -> int:
        """Length of the leading run of `ids` held by some tier: `lookup`'s first half (a router asks replicas'
        caches about every prompt, and needs no more)."""
        if not len(ids):
            return 0
        self._ensure(ids)
        if not self.where[ids[0]]:  # the usual answer of a replica the prompt's session never ran on
            return 0
        return held_run(self.where[ids])

    def tier_of(self, ids: np.ndarray) -> np.ndarray:
        """Best tier holding each id, -1 where none does."""
        ids = np.asarray(ids, dtype=np.int64)
        self._ensure(ids)
        w = self.where[ids]
        return np.where(w != 0, lowest_bit(w), -1)

    def free_blocks(self, tier: int = 0) -> int:
        return int(self.capacity[tier] - self.used[tier] - (self.reserved if tier == 0 else 0))

    def evictable_blocks(self) -> int:
        """Tier-0 blocks that eviction could free now."""
        return int(self.used[0] - np.count_nonzero(self.pins[self._resident(0)]))

    # ---- the request life cycle ----------------------------------------------------------------------------
    def acquire(self, key: Hashable, ids: np.ndarray, n_blocks: int, ctx: AccessContext) -> Grant | None:
        if key in self._held:
            raise ValueError(f"request {key!r} already holds blocks")
        if len(self._held) >= MAX_HOLDERS:
            raise ValueError(f"request {key!r}: {MAX_HOLDERS} requests already hold blocks of this cache")
        ids = np.asarray(ids, dtype=np.int64)
        if n_blocks < len(ids):
            raise ValueError(f"request {key!r}: {len(ids)} block ids but only {n_blocks} blocks needed")
        self._ensure(ids)
        n_hit, hit_tier, lower = found(self.where[ids], len(self.tiers))
        n_new = n_blocks - n_hit
        hits = ids[:n_hit]
        promote = hits[lower] if lower is not None else _NONE
        need = len(promote) + n_new
        moves: list[MoveBatch] = []
        self.pins[hits] += 1  # pinned before making room, so eviction cannot take them
        if not self._room0(need, moves, ctx.now):
            self.pins[hits] -= 1
            self._offer(hits)
            self.stats.refused += 1
            return None
        per_tier = np.bincount(hit_tier, minlength=len(self.tiers)).astype(np.int64)
        for t in range(1, len(self.tiers)):
            if per_tier[t]:
                up = promote[hit_tier[lower] == t]
                self._add(0, up)
                moves.append(MoveBatch("promote", t, 0, up))
        self.reserved += n_new
        self.stats.lookups += 1
        self.stats.hit_blocks += per_tier
        self.stats.promoted += per_tier * (np.arange(len(self.tiers)) > 0)
        self._held[key] = _Held([hits], n_new, len(hits))
        self.policy.on_acquire(hits, ctx)
        return Grant(n_hit, hit_tier, per_tier, moves)

    def reserve(self, key: Hashable, n: int, now: float) -> list[MoveBatch] | None:
        """n more tier-0 blocks for a running request; None if tier 0 cannot make room."""
        moves: list[MoveBatch] = []
        if not self._room0(n, moves, now):
            return None
        self._held[key].reserved += n
        self.reserved += n
        return moves

    def commit(self, key: Hashable, ids: np.ndarray, now: float) -> list[MoveBatch]:
        """Name `len(ids)` of the request's reserved blocks: their KV is written and may now be shared."""
        held = self._held[key]
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) > held.reserved:
            raise ValueError(f"request {key!r} commits {len(ids)} blocks but reserved {held.reserved}")
        self._ensure(ids)
        self.depth[ids] = np.arange(held.named, held.named + len(ids), dtype=np.int32)
        fresh = ids[(self.where[ids] & 1) == 0]  # a block another request wrote meanwhile stays theirs
        held.reserved -= len(fresh)
        self.reserved -= len(fresh)
        self.pins[ids] += 1  # before they enter tier 0: pinned, they join its victim queue only at release
        self._add(0, fresh)
        held.chain.append(ids)
        held.named += len(ids)
        moves: list[MoveBatch] = []
        if self.write_through and len(fresh):
            below = fresh[(self.where[fresh] & 2) == 0]
            self._insert(1, below, moves, now)
            self.stats.written += len(below)
            moves.append(MoveBatch("write", 0, 1, below))
        return moves

    def release(self, key: Hashable, ctx: AccessContext) -> None:
        """The request is done (or preempted): unpin; the policy scores its chain; partial blocks are freed."""
        held = self._held.pop(key)
        self.releases += 1
        chain = np.concatenate(held.chain) if held.chain else np.zeros(0, dtype=np.int64)
        self.pins[chain] -= 1
        self.reserved -= held.reserved
        keys = self.policy.on_release(chain, self.depth[chain], ctx)  # even empty: the turn ended
        keys = keys if isinstance(keys, float) else chain_monotone(keys)  # one key a chain is monotone as it is
        if self._stores_keys:
            self.key[chain] = np.maximum(self.key[chain], keys) if self.policy.keys_only_rise else keys
        if isinstance(keys, float) and self._victims is not None and all(keys > q.ceiling for q in self._victims):
            return  # every block is keyed above each queue's ceiling now (LRU's new key): none would join
        self._offer(chain)

    def tick(self, now: float, at_hand: AtHand | None = None) -> list[MoveBatch]:
        """Carry out the policy's prefetches (head first) wherever tier 0 has room or holds blocks ranked lower.
        `at_hand(tier, ids)` says which of a lower tier's blocks can move up without waiting (an engine loads
        disk and Redis blocks in the background first); a chain is promoted up to its first block that is not."""
        moves: list[MoveBatch] = []
        for chain in self.policy.prefetch(now):
            tiers = self.tier_of(chain)
            if np.any(tiers < 0):
                chain = chain[: int(np.argmax(tiers < 0))]  # only a cached prefix is worth fetching
                tiers = tiers[: len(chain)]
            todo, src = chain[tiers > 0], tiers[tiers > 0]
            if at_hand is not None and len(todo):
                ready = np.ones(len(todo), dtype=bool)
                for t in np.unique(src).tolist():
                    ready[src == t] = at_hand(t, todo[src == t])
                cut = int(np.argmax(~ready)) if not ready.all() else len(todo)
                todo, src = todo[:cut], src[:cut]
            if not len(todo):
                continue
            self.pins[todo] += 1  # making room may demote into their tier: they must not be evicted from it
            n = self._room0_below(len(todo), float(np.min(self.policy.keys(todo, now))), moves, now)
            self.pins[todo] -= 1
            self._offer(todo)
            got, src = todo[:n], src[:n]
            for t in np.unique(src):
                self._add(0, got[src == t])
                moves.append(MoveBatch("promote", int(t), 0, got[src == t]))
            self.stats.prefetched += n
        return moves

    def adopt(self, tier: int, ids: np.ndarray) -> np.ndarray:
        """Blocks a lower tier's store holds that this core did not put there (another process shares the store,
        or this one wrote it before a restart): accounted there while the tier has free room; returns those."""
        ids = np.asarray(ids, dtype=np.int64)
        self._ensure(ids)
        ids = ids[(self.where[ids] & (1 << tier)) == 0][: max(0, self.free_blocks(tier))]
        self._add(tier, ids)
        return ids

    def lose(self, tier: int, ids: np.ndarray) -> None:
        """A lower tier's store no longer holds these blocks (evicted by Redis, corrupted, disk full)."""
        ids = np.asarray(ids, dtype=np.int64)
        self._remove(tier, ids[(self.where[ids] & (1 << tier)) != 0])

    def forget(self, ids: np.ndarray) -> None:
        """Ids no tier holds and no request pins are about to stand for other blocks: reset their state."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        if np.any(self.where[ids] != 0) or np.any(self.pins[ids] != 0):
            raise ValueError("only ids that no tier holds and no request pins can be forgotten")
        if self._stores_keys:
            self.key[ids] = NEVER
        self.depth[ids] = 0
        self.policy.forget(ids)

    # ---- mechanics ------------------------------------------------------------------------------------------
    def _ensure(self, ids: np.ndarray) -> None:
        if not len(ids):
            return
        top = int(ids.max()) + 1
        if top <= self.n_slots:
            return
        if int(ids.min()) < 0:
            raise ValueError("block ids must be non-negative dense ids (see BlockIds)")
        n = max(self.n_slots + self.n_slots // 4, 1024)  # a quarter more: whole-trace runs hold ~10^8 ids
        if self.max_ids is not None and top <= self.max_ids:
            n = min(n, self.max_ids)
        n = max(n, top)
        grow = n - self.n_slots
        self.where = np.concatenate([self.where, np.zeros(grow, np.uint8)])
        self.listed = np.concatenate([self.listed, np.zeros(grow, np.uint8)])
        self.pins = np.concatenate([self.pins, np.zeros(grow, np.int16)])
        self.depth = np.concatenate([self.depth, np.zeros(grow, np.int32)])
        if self._stores_keys:
            self.key = np.concatenate([self.key, np.full(grow, NEVER)])
        self.n_slots = n
        self.policy.grow(n)

    def _resident(self, t: int) -> np.ndarray:
        bit = np.uint8(1 << t)
        members = self._members[t]
        view = members.buf[: members.n]
        keep = (self.where[view] & bit) != 0
        self.listed[view[~keep]] &= np.uint8(~bit & 0xFF)
        alive = view[keep]
        members.n = len(alive)
        members.buf[: members.n] = alive
        return alive

    def _add(self, t: int, slots: np.ndarray) -> None:
        bit = np.uint8(1 << t)
        self.where[slots] |= bit
        self.used[t] += len(slots)
        new = slots[(self.listed[slots] & bit) == 0]
        self.listed[new] |= bit
        self._members[t].add(new)
        if self._victims is not None:
            self._victims[t].offer(slots[self.pins[slots] == 0], self.key)  # pinned: offered at release

    def _offer(self, slots: np.ndarray) -> None:
        """Blocks just unpinned join the victim queues of the tiers holding them (a queue drops pinned entries)."""
        if self._victims is not None:
            free = slots[self.pins[slots] == 0]
            for t, queue in enumerate(self._victims):
                queue.offer(free[(self.where[free] & np.uint8(1 << t)) != 0], self.key)

    def _remove(self, t: int, slots: np.ndarray) -> None:
        self.where[slots] &= np.uint8(~(1 << t) & 0xFF)
        self.used[t] -= len(slots)

    def _room0(self, need: int, moves: list[MoveBatch], now: float) -> bool:
        """Make `need` tier-0 blocks free, evicting unpinned blocks; False (nothing changed) if impossible."""
        short = need - self.free_blocks(0)
        if short <= 0:
            return True
        cands = self._unpinned(0, short + int(self.ahead[0]))
        if len(cands) < short:
            return False
        self._evict_lowest0(cands, self.policy.keys(cands, now), short + int(self.ahead[0]), moves, now)
        return True

    def _room0_below(self, want: int, threshold: float, moves: list[MoveBatch], now: float) -> int:
        """Free up to `want` tier-0 blocks using free space and unpinned blocks keyed below `threshold`."""
        free = self.free_blocks(0)
        if free >= want:
            return want
        cands = self._unpinned(0)
        keys = self.policy.keys(cands, now)
        below = keys < threshold
        return free + self._evict_lowest0(cands[below], keys[below], want - free, moves, now)

    def _unpinned(self, t: int, want: int | None = None, incoming: np.ndarray = _NONE) -> np.ndarray:
        """Unpinned residents of tier t among which (with `incoming`) lie the `want` ranked lowest of the tier:
        its victim queue's entries where it covers them, else all (after a scan that refills the queue).
        want None: all of them."""
        queue = self._victims[t] if self._victims is not None and want is not None else None
        if queue is not None:
            cands, bound = queue.candidates(want, self.where, np.uint8(1 << t), self.key, self.pins)
            if np.count_nonzero(self.key[cands] <= bound) + np.count_nonzero(self.key[incoming] <= bound) >= want:
                return cands
        resident = self._resident(t)
        pins = self.pins[resident]
        if queue is not None:
            queue.refill(resident, self.key[resident], pins, want + int(self._victims_ahead[t]))
        return resident[pins == 0]

    def _evict_lowest0(self, cands: np.ndarray, keys: np.ndarray, k: int, moves: list[MoveBatch], now: float) -> int:
        """Evict the (up to) k candidates ranked lowest from tier 0; returns how many went."""
        k = min(k, len(cands))
        if k:
            chosen = lowest(keys, cands, self.depth, k)
            self.policy.on_evict(keys[chosen])
            self._evict(0, cands[chosen], moves, now)
        return k

    def _evict(self, t: int, victims: np.ndarray, moves: list[MoveBatch], now: float) -> None:
        """Take `victims` out of tier t: demoted to t+1 where they win a place there by key, else dropped. A
        block t+1 holds already is only dropped; one a tier further down holds is still offered to t+1 (a
        block that came up from disk goes back to DRAM, not straight to disk)."""
        self._remove(t, victims)
        has_next = t + 1 < len(self.tiers)
        held = (self.where[victims] & np.uint8(1 << (t + 1))) != 0 if has_next else np.zeros(len(victims), bool)
        placed = self._insert(t + 1, victims[~held], moves, now) if has_next else victims[:0]
        if len(placed):
            moves.append(MoveBatch("demote", t, t + 1, placed))
            self.stats.demoted[t] += len(placed)
        gone = np.setdiff1d(victims, placed, assume_unique=True)
        if len(gone):
            moves.append(MoveBatch("drop", t, -1, gone))
            covered = int(np.count_nonzero(self.where[gone] & np.uint8((0xFF << (t + 1)) & 0xFF)))
            self.stats.freed[t] += covered
            self.stats.dropped[t] += len(gone) - covered

    def _insert(self, t: int, incoming: np.ndarray, moves: list[MoveBatch], now: float) -> np.ndarray:
        """Place `incoming` in tier t, competing by key with its residents; returns the ids placed."""
        if self.capacity[t] <= 0 or not len(incoming):
            return incoming[:0]
        over = int(self.used[t] + len(incoming) - self.capacity[t])
        if over > 0:
            resident = self._unpinned(t, over, incoming)  # pinned here: about to be promoted, copied first
            pool = np.concatenate([resident, incoming])
            out = pool[lowest(self.policy.keys(pool, now), pool, self.depth, over + int(self.ahead[t]))]
            is_incoming = np.isin(out, incoming, assume_unique=True)
            incoming = np.setdiff1d(incoming, out[is_incoming], assume_unique=True)
            if (~is_incoming).any():
                self._evict(t, out[~is_incoming], moves, now)
        self._add(t, incoming)
        return incoming
