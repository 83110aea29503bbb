"""The synthetic agentic generator: calibrated defaults, the fit to real sessions, and the agent structure."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from agentkv.workload.fit import fit
from agentkv.workload.generator import GeneratorConfig, generate
from agentkv.workload.stats import fit_figures, infinite_cache_hits, percentile, trace_stats


@pytest.mark.parametrize("seed", [0, 1])
def test_defaults_are_fitted_to_real_coding_agents(claude_code, seed):
    """The tail that sizes a KV cache, against the 195 Claude Code sessions: token-weighted median context and the
    shares of requests over 128k and 400k within 15%, and the dossier's request median (≈ 96k) within 15%, on
    1,000 generated sessions (300 left one seed's figures 15-30% off another's). The dossier's ">128k" share
    (≈ 50%) is held within 20%: the traces say 39.6%, and with the request median inside 15% of 96k their
    shape puts 41-43% over 128k, not the 42.5% both 15% windows would need."""
    rows = {r.figure: r for r in fit_figures(generate(GeneratorConfig(sessions=1000, seed=seed, with_block_ids=False)),
                                             claude_code)}
    for figure in ("token_weighted_median", "share_over_128k", "share_over_400k"):
        assert rows[figure].ratio(rows[figure].real) == pytest.approx(1.0, abs=0.15), figure
    assert rows["request_median"].ratio(rows["request_median"].dossier) == pytest.approx(1.0, abs=0.15)
    assert rows["share_over_128k"].ratio(rows["share_over_128k"].dossier) == pytest.approx(1.0, abs=0.20)
    assert rows["token_weighted_median"].real == pytest.approx(158_577)  # the figure the fit was searched against


def test_fit_reproduces_claude_code_sessions(claude_code):
    cfg = fit(claude_code)
    assert cfg.sessions == 195 and len(cfg.shapes) == 195
    real = trace_stats(claude_code)
    seeds = [generate(replace(cfg, seed=s, with_block_ids=False)) for s in range(3)]
    median = np.mean([percentile(t.input_tokens, 50) for t in seeds])
    p90 = np.mean([percentile(t.input_tokens, 90) for t in seeds])
    share = np.mean([np.mean(t.input_tokens > 128_000) for t in seeds])
    assert median == pytest.approx(real.input["p50"], rel=0.10)
    assert p90 == pytest.approx(real.input["p90"], rel=0.10)
    assert share == pytest.approx(real.share_over_128k, rel=0.10)
    hit = trace_stats(generate(cfg)).hit_rate_per_session
    assert hit == pytest.approx(real.hit_rate_per_session, rel=0.10)


def test_fit_round_trips_through_json(claude_code):
    cfg = fit(claude_code)
    assert GeneratorConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown field 'sesions'"):
        GeneratorConfig.from_json('{"sesions": 3}')


def test_same_seed_same_trace():
    a, b = generate(GeneratorConfig(sessions=20, seed=3)), generate(GeneratorConfig(sessions=20, seed=3))
    assert all(np.array_equal(a.blocks(i), b.blocks(i)) for i in range(a.n_requests))
    assert np.array_equal(a.time, b.time)
    c = generate(GeneratorConfig(sessions=20, seed=4))
    assert not np.array_equal(a.input_tokens, c.input_tokens)


def test_agent_structure():
    cfg = GeneratorConfig(sessions=60, agents=2, subagent_rate=0.02)
    t = generate(cfg)
    t.validate()
    top = np.flatnonzero(t.session_parent < 0)
    first = t.session_bounds()[top]
    # sessions of one agent share its system prompt and tool schemas; other agents' sessions do not
    a0, a1 = t.session_tenant[top[0]], t.session_tenant[top[1]]
    same = next(s for s in top[2:] if t.session_tenant[s] == a0)
    assert t.blocks(first[0])[0] == t.blocks(t.session_bounds()[same])[0]
    assert a0 != a1 and t.blocks(first[0])[0] != t.blocks(first[1])[0]
    # cross-session reuse: one shared cache beats one cache per session
    order = np.argsort(t.time + 1e6 * t.session, kind="stable")
    assert infinite_cache_hits(t, order, False).sum() > infinite_cache_hits(t, order, True).sum()
    # sub-agents exist, are children, and run on their parent's clock after its request
    subs = np.flatnonzero(t.session_parent >= 0)
    assert len(subs) > 0
    for s in subs:
        parent_times = t.time[t.session == t.session_parent[s]]
        assert t.time[t.session == s].min() > parent_times.min()
    # context grows turn to turn, and compaction shrinks it now and then
    steps = np.diff(t.input_tokens)[np.diff(t.session) == 0]
    assert np.median(steps) > 0 and np.any(steps < 0)


def test_prefix_breaks_happen():
    t = generate(GeneratorConfig(sessions=40, edit_rate=0.2, header_change_rate=0.1))
    broken = 0
    for i in range(t.n_requests - 1):
        if t.session[i] == t.session[i + 1] and t.input_tokens[i + 1] >= t.input_tokens[i]:
            prev, cur = t.blocks(i), t.blocks(i + 1)
            broken += not np.array_equal(cur[: len(prev)], prev)
    assert broken > 0.1 * t.n_requests
