"""`fit(trace)`: the synthetic workload's parameters (workload/generator.py) estimated from a real trace.

Top-level sessions and sub-agents are fitted apart. From the top-level sessions: how prompts grow request to
request (per turn for the warm-up, per session for its spread), where they drop (compaction), where a prefix
breaks (edits), which context window class each session reaches; from every request: output lengths, think
times and the API's time per output token.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from agentkv.workload.blocklog import common_prefix
from agentkv.workload.generator import GeneratorConfig, LogNormal, Quantiles, WindowClass
from agentkv.workload.trace import Trace

WINDOW_EDGES = (128_000, 200_000)  # sessions are classed by the largest context they reach: ≤128k, ≤200k, more


@dataclass(slots=True)
class _Growth:
    """How the top-level sessions' prompts move from one request to the next."""

    by_turn: list[list[float]]  # growth at turns 1..len(warmup), and later
    steps: list[float] = field(default_factory=list)  # growth where the prompt grew and did not drop
    drops_before: list[float] = field(default_factory=list)  # prompt sizes a compaction followed
    drop_share: list[float] = field(default_factory=list)  # what a compaction kept
    log_steps_by_session: list[np.ndarray] = field(default_factory=list)
    session_step: list[float] = field(default_factory=list)  # mean growth per session (NaN: too few turns)
    session_compact: list[float] = field(default_factory=list)  # largest prompt compacted per session (NaN: none)
    breaks: int = 0  # transitions whose prefix broke (an edit)
    keeps: list[float] = field(default_factory=list)  # share of the prefix an edit kept
    transitions: int = 0


def fit(trace: Trace, sessions: int | None = None, seed: int = 0) -> GeneratorConfig:
    """Generator parameters estimated from a real trace (sub-agents fitted apart from top-level sessions)."""
    if trace.n_requests == 0:
        raise ValueError("cannot fit the generator to an empty trace")
    cfg = GeneratorConfig()
    bs = trace.block_size
    top = trace.session_parent < 0
    bounds = trace.session_bounds()
    per_session = [np.arange(bounds[s], bounds[s + 1]) for s in range(trace.n_sessions)]
    top_reqs = [r for s, r in enumerate(per_session) if top[s] and len(r)]
    sub_reqs = [r for s, r in enumerate(per_session) if not top[s] and len(r)]
    inp, out = trace.input_tokens, trace.output_tokens
    seen_prefix = _shared_prefix_tokens(trace, top_reqs) if trace.has_block_ids else 0
    # session-local ids hide the shared prefix; the generator still lays one down, so take it out of the history
    shared_prefix = LogNormal(float(seen_prefix), 0.0) if seen_prefix else cfg.shared_prefix
    offset = int(shared_prefix.median) + cfg.header_tokens  # what precedes a session's own history
    g = _growth(trace, top_reqs, len(cfg.warmup))
    n_requests = np.array([len(r) for r in top_reqs])
    first = np.array([inp[r[0]] for r in top_reqs])
    cls = np.searchsorted(np.array(WINDOW_EDGES), np.array([inp[r].max() for r in top_reqs]), side="left")
    windows = _windows(inp, top_reqs, cls, n_requests, np.maximum(first - offset, bs), g.drops_before)
    step, between, step_mean = _step(g, cfg.step)
    shapes = tuple((int(cls[i]), float(n_requests[i]), float(max(first[i] - offset, bs)),
                    g.session_step[i] if g.session_step[i] == g.session_step[i] else step_mean,
                    g.session_compact[i] if g.session_compact[i] == g.session_compact[i] else windows[cls[i]].compact_at)
                   for i in range(len(top_reqs)))
    updates = dict(
        sessions=sessions or len(top_reqs), seed=seed, block_size=bs, shared_prefix=shared_prefix,
        turns=LogNormal.fit(n_requests), step=step, session_step_sigma=between, windows=windows,
        warmup=tuple(float(np.mean(t) / np.mean(g.by_turn[-1])) if t else 1.0 for t in g.by_turn[:-1])
        if g.by_turn[-1] and np.mean(g.by_turn[-1]) > 0 else cfg.warmup,
        shapes=shapes,
        compacted_share=Quantiles.fit(np.array(g.drop_share)) if g.drop_share else cfg.compacted_share,
        header_change_rate=0.0,  # header changes and edits look alike in a trace: all breaks are fitted as edits
        edit_rate=g.breaks / g.transitions if g.transitions else cfg.edit_rate,
        edit_keep=tuple(float(q) for q in np.quantile(g.keeps, np.linspace(0, 1, 7))) if g.keeps else cfg.edit_keep,
        output=LogNormal.fit(out), subagent_rate=len(sub_reqs) / int(n_requests.sum()), fitted_from=trace.source,
        **_timing(trace, top_reqs, cfg))
    if sub_reqs:
        updates["subagent_turns"] = LogNormal.fit(np.array([len(r) for r in sub_reqs]))
        updates["subagent_prefix"] = LogNormal.fit(np.array([inp[r[0]] for r in sub_reqs]))
        updates["subagent_initial"] = LogNormal(float(bs), 0.0)
    return replace(cfg, **updates)


def _growth(trace: Trace, top_reqs: list[np.ndarray], warmup_turns: int) -> _Growth:
    g = _Growth([[] for _ in range(warmup_turns + 1)])
    inp = trace.input_tokens
    for reqs in top_reqs:
        a, b = reqs[:-1], reqs[1:]
        grow = inp[b] - inp[a]
        dropped = inp[b] < 0.7 * inp[a]
        g.drops_before.extend(inp[a][dropped])
        g.session_compact.append(float(np.max(inp[a][dropped])) if dropped.any() else np.nan)  # smaller: /clear
        g.drop_share.extend(inp[b][dropped] / inp[a][dropped])
        ok = ~dropped & (grow > 0)
        g.steps.extend(grow[ok])
        kept = ~dropped
        for k in np.flatnonzero(kept):
            g.by_turn[min(k, warmup_turns)].append(max(float(grow[k]), 0.0))
        g.session_step.append(float(np.mean(np.maximum(grow[kept], 0))) if kept.sum() >= 3 else np.nan)
        if ok.sum() >= 5:
            g.log_steps_by_session.append(np.log(grow[ok]))
        if trace.has_block_ids:
            _count_breaks(trace, a, b, dropped, g)
    return g


def _count_breaks(trace: Trace, a: np.ndarray, b: np.ndarray, dropped: np.ndarray, g: _Growth) -> None:
    """Transitions (not compactions) whose next prompt keeps less than all of the previous one's blocks."""
    log, lens = trace.block_log, trace.blocks_per_request
    for i, j, d in zip(a, b, dropped, strict=True):
        if d:
            continue
        g.transitions += 1
        n_prev = int(lens[i])
        kept = int(log.shared[j]) if log.parent[j] == i else common_prefix(trace.blocks(i), trace.blocks(j))
        if kept < n_prev:
            g.breaks += 1
            g.keeps.append(kept / max(n_prev, 1))


def _windows(inp: np.ndarray, top_reqs: list[np.ndarray], cls: np.ndarray, n_requests: np.ndarray,
             history: np.ndarray, drops_before: list[float]) -> tuple[WindowClass, ...]:
    """One class per context window reached: its share of requests, where it compacts, its first history."""
    windows = []
    for c in range(len(WINDOW_EDGES) + 1):
        members = cls == c
        if not members.any():
            continue
        in_class = np.concatenate([inp[r] for r, m in zip(top_reqs, members, strict=True) if m])
        lo, hi = WINDOW_EDGES[c - 1] if c else 0, WINDOW_EDGES[c] if c < len(WINDOW_EDGES) else np.inf
        pre = np.array([d for d in drops_before if lo < d <= hi])
        windows.append(WindowClass(
            share=float(n_requests[members].sum() / n_requests.sum()),
            compact_at=float(np.median(pre)) if len(pre) else float(in_class.max()) + 1.0,
            initial_history=Quantiles.fit(history[members]),
        ))
    return tuple(windows)


def _step(g: _Growth, default: LogNormal) -> tuple[LogNormal, float, float]:
    """(a turn's growth, the spread of the sessions' mean growth, the mean growth)."""
    steps = g.steps
    log_steps = np.log(np.maximum(np.array(steps, dtype=np.float64), 1.0))
    step_median = float(np.exp(np.median(log_steps))) if len(steps) else default.median
    step_mean = float(np.mean(steps)) if len(steps) else default.median
    by_session = g.log_steps_by_session
    within = np.concatenate([x - x.mean() for x in by_session]) if by_session else log_steps
    between = 0.0
    if len(by_session) > 1:  # spread of session means, less what sampling noise alone would give
        means = np.array([x.mean() for x in by_session])
        noise = np.mean([np.var(within) / len(x) for x in by_session])
        between = float(np.sqrt(max(np.var(means) - noise, 0.0)))
    step = LogNormal(step_median, float(np.std(within))) if len(steps) else default
    return step, between, step_mean


def _timing(trace: Trace, top_reqs: list[np.ndarray], cfg: GeneratorConfig) -> dict:
    """Think times (a person's above 60 s, a tool's below) and the API's overhead and decode speed."""
    think = trace.think_time[np.concatenate([r[1:] for r in top_reqs])].astype(np.float64)
    think = think[~np.isnan(think)]
    human = think > 60.0
    api = trace.api_time.astype(np.float64)
    timed = ~np.isnan(api)
    overhead, decode = cfg.api_overhead_s, cfg.decode_tok_s
    if timed.sum() >= 10:
        slope, intercept = np.polyfit(trace.output_tokens[timed].astype(np.float64), api[timed], 1)
        if slope > 0:
            overhead, decode = max(float(intercept), 0.0), float(1.0 / slope)
    return dict(human_turn_share=float(human.mean()) if len(think) else cfg.human_turn_share,
                tool_think=LogNormal.fit(think[~human]) if (~human).sum() > 1 else cfg.tool_think,
                human_think=LogNormal.fit(think[human]) if human.sum() > 1 else cfg.human_think,
                api_overhead_s=overhead, decode_tok_s=decode)
def _shared_prefix_tokens(trace: Trace, top_reqs: list[np.ndarray]) -> int:
    """Median over sessions of the leading run of first-request blocks that other sessions also hold (0 when
    ids are session-local, as in kv-cache-tester traces: no cross-session reuse can be seen)."""
    owner_lo = np.full(trace.n_block_ids, np.iinfo(np.int64).max, dtype=np.int64)
    owner_hi = np.full(trace.n_block_ids, -1, dtype=np.int64)
    ids = trace.block_log.ids  # a session's new ids name every id it holds
    sess = trace.session.astype(np.int64)[trace.block_log.owners()]
    np.minimum.at(owner_lo, ids, sess)
    np.maximum.at(owner_hi, ids, sess)
    shared = owner_lo != owner_hi
    runs = []
    for r in top_reqs:
        ids = trace.blocks(int(r[0]))
        flags = shared[ids]
        runs.append(int(np.argmin(flags)) if len(flags) and not flags.all() else len(flags))
    return int(np.median(runs)) * trace.block_size if runs else 0
