"""Agent-aware: rank blocks by when their session will be back, forecast from how its last reply ended.

Agentic traffic is sessions that pause and come back with the same prefix plus a little more. The serving
engine knows, when a turn ends, whether its reply called a tool (the agent runs it and is back in seconds)
or ended the turn (a person reads, for minutes or hours). So:
- each block belongs to the session that last used it; its key is minus that session's forecast return
  time, so the sessions coming back soonest keep their KV: Belady's rule with a forecast for the future;
- the forecast is the mean residual life of the pause between the end of a session's reply and its next
  request (the tool's run time, or the person's think time): given that e seconds have passed since the
  reply ended, how much longer pauses of the same kind (after a tool call / after the end of a turn /
  unknown) that lasted e seconds went on, stretched to this session's own pace and to the length of its
  last reply (longer replies: longer pauses; the exponent is fitted online). Pauses are measured from the
  reply's end, not from the request's arrival, because the engine knows how long the reply took: only the
  pause is uncertain (on the claude-code sessions this closes 43% instead of 38% of the LRU→Belady gap at
  256k). Pauses are heavy-tailed, so an overdue session is pushed further out rather than kept;
- blocks shared by several sessions (an agent's system prompt and tool schemas) are protected;
- blocks a session's latest request no longer uses (left behind by compaction or an edit) go first;
- with a lower tier, evicted KV is demoted rather than dropped (the core does so for every policy), and
  `prefetch` brings a session's chain back to the GPU tier ahead of its forecast return.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from agentkv.kvcache.policy import AccessContext, Policy

PROTECT = 1e18  # keys of shared blocks sit above any session's; dead blocks below
N_KINDS = 3  # pause kinds: indexed by the FINISH_* of the reply before the pause
MIN_SAMPLES = 16  # below this a kind borrows the pooled distribution


class _Pauses:
    """The most recent pauses of one kind (a long-running engine forgets old traffic), kept sorted with tail
    sums for mean residual life; the sorted table is rebuilt as a quarter more pauses arrive."""

    def __init__(self, window: int = 20_000) -> None:
        self.recent: deque[float] = deque(maxlen=window)
        self.fresh = 0
        self.builds = 0  # how often the table was rebuilt: forecasts made before a rebuild are stale
        self.sorted = np.zeros(0)
        self.tail_sum = np.zeros(1)

    def add(self, pause: float) -> None:
        self.recent.append(pause)
        self.fresh += 1
        if self.fresh >= 0.25 * len(self.sorted) + 8:
            self.sorted = np.sort(np.fromiter(self.recent, dtype=np.float64))
            self.tail_sum = np.concatenate([np.cumsum(self.sorted[::-1])[::-1], [0.0]])
            self.fresh = 0
            self.builds += 1

    @property
    def median(self) -> float:
        return float(self.sorted[len(self.sorted) // 2]) if len(self.sorted) else float("nan")

    def mean_residual_life(self, e: np.ndarray) -> np.ndarray:
        """E[pause − e | pause > e]; past the longest pause seen the session has likely ended, so its
        return recedes as fast as time passes."""
        g = self.sorted
        i = np.searchsorted(g, e, side="right")
        above = len(g) - i
        return np.where(above > 0, self.tail_sum[i] / np.maximum(above, 1) - e, e + (g[-1] if len(g) else 60.0))


class AgentAware(Policy):
    name = "agent"
    keys_move_with_time = True  # a block's key is its session's predicted return, which moves with the clock

    def __init__(self, prefetch_lead_s: float = 10.0) -> None:
        self.lead = prefetch_lead_s
        self.owner = np.zeros(0, dtype=np.int32)  # session that last used the block (-1: none)
        self.touch = np.zeros(0, dtype=np.int64)  # release number of that use
        self.shared = np.zeros(0, dtype=bool)
        self.releases = 0
        self.kinds = [_Pauses() for _ in range(N_KINDS)]
        self.pooled = _Pauses()
        # per session, grown on demand
        self.last_release = np.zeros(0)  # when its last reply ended (NaN: none yet)
        self.serving = np.zeros(0, dtype=bool)  # a request of the session holds its blocks
        self.last_kind = np.zeros(0, dtype=np.int64)  # how that turn ended
        self.last_seq = np.zeros(0, dtype=np.int64)
        self.pace = np.zeros(0)  # its gaps relative to the typical gap of their kind (median ratio)
        self.reply = np.zeros(0)  # its last reply's length relative to the typical reply (1: unknown)
        self.due_after = np.zeros(0)  # a time its forecast return cannot precede (-inf: unknown, inf: not away)
        self.forecast_basis: tuple = ()  # (now, the tables' state) at the last prefetch: when bounds go stale
        self.out_log: deque[float] = deque(maxlen=20_000)  # recent (log reply length, log gap ratio) pairs
        self.gap_log: deque[float] = deque(maxlen=20_000)
        self.learned = 0
        self.reply_exponent = 0.0
        self.typical_reply = 0.0
        self.ratios: list[list[float]] = []
        self.chains: list[np.ndarray] = []

    def grow(self, n_slots: int) -> None:
        if n_slots > np.iinfo(np.int32).max:
            raise ValueError("the agent-aware policy keeps block ids as int32: at most 2**31 - 1 of them")
        extra = n_slots - len(self.owner)
        self.owner = np.concatenate([self.owner, np.full(extra, -1, dtype=np.int32)])
        self.touch = np.concatenate([self.touch, np.zeros(extra, dtype=np.int64)])
        self.shared = np.concatenate([self.shared, np.zeros(extra, dtype=bool)])

    def forget(self, slots: np.ndarray) -> None:
        self.owner[slots] = -1
        self.touch[slots] = 0
        self.shared[slots] = False

    def _session(self, s: int) -> None:
        pad = s + 1 - len(self.last_release)
        if pad > 0:
            self.last_release = np.concatenate([self.last_release, np.full(pad, np.nan)])
            self.serving = np.concatenate([self.serving, np.zeros(pad, dtype=bool)])
            self.last_kind = np.concatenate([self.last_kind, np.zeros(pad, dtype=np.int64)])
            self.last_seq = np.concatenate([self.last_seq, np.zeros(pad, dtype=np.int64)])
            self.pace = np.concatenate([self.pace, np.ones(pad)])
            self.reply = np.concatenate([self.reply, np.ones(pad)])
            self.due_after = np.concatenate([self.due_after, np.full(pad, -np.inf)])
            self.ratios += [[] for _ in range(pad)]
            self.chains += [np.zeros(0, dtype=np.int64) for _ in range(pad)]

    def forget_session(self, session: int) -> None:
        if session >= len(self.last_release):
            return
        s = session
        self.last_release[s], self.serving[s], self.last_kind[s], self.last_seq[s] = np.nan, False, 0, 0
        self.pace[s] = self.reply[s] = 1.0
        self.due_after[s] = np.inf
        self.ratios[s], self.chains[s] = [], np.zeros(0, dtype=np.int64)
        self.owner[self.owner == s] = -1  # its blocks belong to no session now

    def _table(self, kind: int) -> _Pauses:
        table = self.kinds[kind]
        return table if len(table.sorted) >= MIN_SAMPLES else self.pooled

    def classify(self, session: int, finish: int) -> None:
        """The kind its last release filed as unknown; a session serving again has filed its pause already."""
        if session < len(self.last_release) and not self.serving[session]:
            self.last_kind[session] = finish if 0 <= finish < N_KINDS else 0
            self.due_after[session] = -np.inf

    def on_acquire(self, hits: np.ndarray, ctx: AccessContext) -> None:
        s = ctx.session
        if s < 0:
            return
        self._session(s)
        # a new use: whatever of this session the request does not reuse is dead from now on
        self.releases += 1
        self.touch[hits] = self.releases
        self.last_seq[s] = self.releases
        if not np.isnan(self.last_release[s]):
            pause = max(ctx.now - self.last_release[s], 0.0)
            kind = int(self.last_kind[s])
            typical = self._table(kind).median
            if typical == typical and typical > 0:
                ratio = max(pause, 1e-3) / typical
                self.ratios[s].append(ratio)
                self.pace[s] = float(np.median(self.ratios[s][-16:]))
                if self.reply[s] != 1.0:
                    self._learn_reply(float(np.log(self.reply[s])), float(np.log(ratio)))
            self.kinds[kind].add(pause)
            self.pooled.add(pause)
        self.serving[s] = True
        self.due_after[s] = np.inf

    def on_release(self, slots: np.ndarray, depth: np.ndarray, ctx: AccessContext) -> np.ndarray:
        self.releases += 1
        s = ctx.session
        if s >= 0:
            self._session(s)
            mine = self.owner[slots]
            self.shared[slots] |= (mine >= 0) & (mine != s)
            self.owner[slots] = s
            self.serving[s] = False
            self.last_release[s] = ctx.now
            self.last_kind[s] = ctx.finish if 0 <= ctx.finish < N_KINDS else 0
            self.reply[s] = self._relative_reply(ctx.output_tokens)
            self.last_seq[s] = self.releases
            self.chains[s] = slots.astype(np.int32)  # one per session ever seen: half the bytes of the ids
            self.due_after[s] = -np.inf
        self.touch[slots] = self.releases
        return np.zeros(len(slots))  # keys are computed when needed: they change as time passes

    def keys(self, slots: np.ndarray, now: float) -> np.ndarray:
        """Shared blocks on top, then live ones by their session's forecast return, dead ones at the bottom.
        A whole tier is keyed at every eviction: each per-block array is read once, and a block of no session
        (owner -1) reads the sentinel appended to each per-session array. Forecasts are made for every session or
        for the blocks' own owners, whichever are fewer."""
        owner = self.owner[slots]
        touch = self.touch[slots]  # release counts: compared as integers, made keys (floats) only where used
        if len(slots) < len(self.last_release):
            sessions, owner = np.unique(owner, return_inverse=True)
            known = sessions >= 0
            ret = np.full(len(sessions), np.inf)
            ret[known] = self.predicted_return(now, sessions[known])
            keys, last_seq = -ret[owner], np.where(known, self.last_seq[sessions], -1)[owner]
        else:
            keys = np.append(-self.predicted_return(now), -np.inf)[owner]
            last_seq = np.append(self.last_seq, -1)[owner]
        dead = touch < last_seq
        keys[dead] = touch[dead] - PROTECT
        shared = self.shared[slots]
        keys[shared] = touch[shared] + PROTECT
        return keys

    def predicted_return(self, now: float, sessions: np.ndarray | None = None) -> np.ndarray:
        """Forecast arrival of each session's next request (of `sessions`, default all; now for sessions in
        service). A reply may end after `now` (an offline replay releases a request at the end of its recorded
        service time). Given the tables, a session's forecast never moves earlier as time passes: E[pause | pause
        > e] only grows with e (`prefetch` relies on it)."""
        pick = slice(None) if sessions is None else sessions
        last_release, kinds = self.last_release[pick], self.last_kind[pick]
        away = ~self.serving[pick] & ~np.isnan(last_release)
        since = np.where(away, now - last_release, 0.0)  # nan where never released: not away, not read
        elapsed = np.maximum(since, 0.0)
        remaining = np.maximum(-since, 0.0)
        pace = np.maximum(self.pace[pick] * self.reply[pick] ** self.reply_exponent, 1e-3)
        for kind in range(N_KINDS):
            sel = away & (kinds == kind)
            if sel.any():
                table = self._table(kind)
                remaining[sel] += pace[sel] * table.mean_residual_life(elapsed[sel] / pace[sel])
        return np.where(away, now + remaining, now)

    def _relative_reply(self, tokens: int) -> float:
        if tokens <= 0:
            return 1.0
        self.typical_reply = tokens if not self.typical_reply else 0.99 * self.typical_reply + 0.01 * tokens
        return max(tokens / self.typical_reply, 1e-3)

    def _learn_reply(self, log_reply: float, log_ratio: float) -> None:
        """Slope of log gap on log reply length (least squares over what was seen, refreshed as it grows)."""
        self.out_log.append(log_reply)
        self.gap_log.append(log_ratio)
        self.learned += 1
        n = self.learned
        if (n >= 32 and (n & (n - 1)) == 0) or n % 256 == 0:
            x, y = np.asarray(self.out_log), np.asarray(self.gap_log)
            var = float(np.var(x))
            self.reply_exponent = float(np.clip(np.cov(x, y, bias=True)[0, 1] / var, 0.0, 1.0)) if var > 0 else 0.0

    def prefetch(self, now: float) -> list[np.ndarray]:
        """The chains of the sessions forecast back within the lead, soonest first. Only sessions whose bound
        (`due_after`: their last forecast, which only moves later while the tables stay as they were) falls
        within the lead are forecast again: at 13k sessions most are far from due at every tick."""
        if len(self.cache.tiers) < 2 or not len(self.last_release):
            return []
        basis = (now, self.reply_exponent, self.pooled.builds, *(t.builds for t in self.kinds))
        if basis[1:] != self.forecast_basis[1:] or now < self.forecast_basis[0]:
            self.due_after[np.isfinite(self.due_after)] = -np.inf  # new tables or an earlier clock: all stale
        self.forecast_basis = basis
        horizon = now + self.lead
        maybe = np.flatnonzero(self.due_after <= horizon)
        if not len(maybe):
            return []
        ret = self.predicted_return(now, maybe)
        away = ~self.serving[maybe] & ~np.isnan(self.last_release[maybe])
        self.due_after[maybe] = np.where(away, ret - (1e-6 + 1e-12 * np.abs(ret)), np.inf)  # rounding's margin
        due = away & (ret <= horizon)
        order = maybe[due][np.argsort(ret[due], kind="stable")]
        return [self.chains[s].astype(np.int64) for s in order if len(self.chains[s])]
