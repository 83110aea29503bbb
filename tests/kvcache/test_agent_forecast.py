"""The agent-aware policy forecasts only the sessions that can matter (policies/agent.py) and still makes the
choices forecasting every session would."""

from __future__ import annotations

import numpy as np
import pytest

from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.policies import AgentAware
from agentkv.kvcache.policy import AccessContext
from agentkv.kvcache.tiers import TierSpec
from tests.kvcache.synthetic import random_stream


class EveryForecast(AgentAware):
    """Computes each answer again from every session's forecast, and fails where the shortcut differs."""

    due_ticks = 0
    subset_keys = 0

    def prefetch(self, now: float) -> list[np.ndarray]:
        got = super().prefetch(now)
        ret = self.predicted_return(now)
        away = ~self.serving & ~np.isnan(self.last_release)
        due = np.flatnonzero(away & (ret <= now + self.lead))
        want = [self.chains[s] for s in due[np.argsort(ret[due], kind="stable")] if len(self.chains[s])]
        assert [c.tolist() for c in got] == [c.tolist() for c in want]
        self.due_ticks += bool(want)
        return got

    def keys(self, slots: np.ndarray, now: float) -> np.ndarray:
        got = super().keys(slots, now)
        owner = self.owner[slots]
        want = np.append(-self.predicted_return(now), -np.inf)[owner]
        touch = self.touch[slots].astype(np.float64)
        dead = touch < np.append(self.last_seq, -1)[owner]
        want[dead] = touch[dead] - 1e18
        want[self.shared[slots]] = touch[self.shared[slots]] + 1e18
        assert np.array_equal(got, want)
        self.subset_keys += len(slots) < len(self.last_release)
        return got


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forecasting_the_sessions_near_due_changes_no_choice(seed):
    """Many sessions, mostly away for long, pauses of three kinds with their own spreads (so the tables are
    rebuilt as the run goes): every prefetch list and every key equals the all-sessions computation."""
    rng = np.random.default_rng(seed)
    stream, owner = random_stream(seed, 60, 1500)
    policy = EveryForecast(prefetch_lead_s=4.0)
    cache = KVCache([TierSpec("gpu", 120.0, 1), TierSpec("dram", 400.0, 1)], policy)
    now, running = 0.0, []
    for r, ids in enumerate(stream):
        now += float(rng.exponential(0.5))
        cache.tick(now)
        ids = ids[:30]
        ctx = AccessContext(now, session=owner[r], request=r, finish=int(rng.integers(0, 3)))
        grant = cache.acquire(r, ids, len(ids) + 1, ctx)
        if grant is not None:
            cache.commit(r, ids[grant.hit_blocks:], now)
            running.append((r, ctx))
        while running and (len(running) > 3 or rng.random() < 0.5):
            k, kctx = running.pop(0)
            cache.release(k, AccessContext(now + float(rng.exponential(0.2)), session=kctx.session, request=k,
                                           finish=kctx.finish))
    assert policy.due_ticks > 50 and policy.subset_keys > 50  # both shortcuts were exercised
    assert cache.stats.demoted[0] > 0 and cache.stats.promoted.sum() > 0  # tiers filled, chains came back
