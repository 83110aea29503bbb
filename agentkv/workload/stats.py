"""What a trace asks of a KV cache: sizes, the share over 128k, the ceiling on prefix reuse, working set, load.

Percentiles are nearest-rank (the value of a real request), the convention the data sets' own figures use.
The infinite-cache hit rate counts, per request, the leading run of block ids already seen (times the block
size, capped at the request's input), weighted by tokens: the most any prefix cache could reuse.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from agentkv.workload.arrivals import ArrivalModel, arrival_times, replay_order, root_sessions
from agentkv.workload.trace import Trace

PERCENTILES = (10, 50, 90, 99)
LONG_CONTEXT = 128_000
VERY_LONG_CONTEXT = 400_000
# what the dossier says of coding agents (request-weighted): median input ~96k tokens, about half over 128k
DOSSIER = {"request_median": 96_000.0, "share_over_128k": 0.5}


def percentile(x: np.ndarray, q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q% of the data at or below it."""
    if len(x) == 0:
        return float("nan")
    return float(np.percentile(x, q, method="inverted_cdf"))


def distribution(x: np.ndarray) -> dict[str, float]:
    d = {f"p{q}": percentile(x, q) for q in PERCENTILES}
    d["max"] = float(np.max(x)) if len(x) else float("nan")
    d["mean"] = float(np.mean(x)) if len(x) else float("nan")
    return d


def gather_new(trace: Trace, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(new block ids of the log, rank of their request in `order`) for `order`'s requests, concatenated."""
    log = trace.block_log
    lens = np.diff(log.offsets)[order]
    total = int(lens.sum())
    seg_start = np.concatenate([[0], np.cumsum(lens)[:-1]])
    src = np.repeat(log.offsets[:-1][order] - seg_start, lens) + np.arange(total)
    return log.ids[src], np.repeat(np.arange(len(order)), lens)


def infinite_cache_hits(trace: Trace, order: np.ndarray, per_session: bool) -> np.ndarray:
    """Hit tokens of every request (indexed like the trace) with a cache that never forgets, replayed in `order`.

    per_session: each session (and each sub-agent) has a cache of its own; else one cache serves all. Works on
    the block log: a request whose parent ran before it hits the shared part, then the leading run of its new
    ids that an earlier request held.
    """
    hits = np.zeros(trace.n_requests, dtype=np.int64)
    if not trace.has_block_ids or trace.n_requests == 0:
        return hits
    first = np.full(trace.n_block_ids, np.iinfo(np.int64).max, dtype=np.int64)
    if per_session:  # requests are grouped by session in time order: one pass per session, cache reset between
        bounds = trace.session_bounds()
        groups = [np.arange(bounds[s], bounds[s + 1]) for s in range(trace.n_sessions)]
    else:
        groups = [order]
    for group in groups:
        log = trace.block_log
        rank_of = np.full(trace.n_requests, np.iinfo(np.int64).max, dtype=np.int64)
        rank_of[group] = np.arange(len(group))
        parent = log.parent[group]
        late = group[(parent >= 0) & (rank_of[np.maximum(parent, 0)] > np.arange(len(group)))]
        view = trace if not len(late) else replace(trace, block_log=log.detach(late))  # parent not run first
        ids, rank = gather_new(view, group)
        np.minimum.at(first, ids, rank)
        run = leading_run(first[ids] < rank, np.diff(view.block_log.offsets)[group])
        hits[group] = np.minimum((view.block_log.shared[group] + run) * trace.block_size, trace.input_tokens[group])
        first[ids] = np.iinfo(np.int64).max
    return hits


def leading_run(flags: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """For consecutive segments of `flags` with lengths `lens`, the length of each segment's leading run of True."""
    seg_start = np.concatenate([[0], np.cumsum(lens)[:-1]])
    pos = np.arange(len(flags)) - np.repeat(seg_start, lens)
    miss_pos = np.where(flags, np.iinfo(np.int64).max, pos)
    run = lens.astype(np.int64).copy()
    nonempty = lens > 0
    if np.any(nonempty):
        first_miss = np.minimum.reduceat(miss_pos, seg_start[nonempty])
        run[nonempty] = np.minimum(first_miss, lens[nonempty])
    return run


def sorted_unique(x: np.ndarray) -> np.ndarray:
    """np.unique without its slow paths for large integer arrays."""
    s = np.sort(x)
    return s[np.concatenate([[True], s[1:] != s[:-1]])] if len(s) else s


def working_set(trace: Trace, arrivals: np.ndarray, window: float) -> tuple[np.ndarray, np.ndarray]:
    """(window start times, distinct KV tokens referenced in each tumbling window of `window` seconds).

    Without block ids, every request's input counts in full (no dedup is possible).
    """
    if trace.n_requests == 0:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    win = np.floor((arrivals - arrivals.min()) / window).astype(np.int64)
    n_win = int(win.max()) + 1
    if not trace.has_block_ids:
        tokens = np.bincount(win, weights=trace.input_tokens, minlength=n_win).astype(np.int64)
    else:
        ids, owner = trace.block_log.covering(win)
        keys = sorted_unique(win[owner] * max(trace.n_block_ids, 1) + ids)
        tokens = np.bincount(keys // max(trace.n_block_ids, 1), minlength=n_win) * trace.block_size
    return np.arange(n_win) * window, tokens


@dataclass(slots=True)
class TraceStats:
    source: str
    arrival: str
    requests: int
    sessions: int
    top_level_sessions: int
    subagents: int
    subagent_requests: int
    input_tokens: int
    output_tokens: int
    input: dict[str, float]
    output: dict[str, float]
    share_over_128k: float
    hit_rate_per_session: float
    hit_rate_global: float
    duration_s: float
    offered_input_tok_s: float
    offered_uncached_tok_s: float
    offered_output_tok_s: float
    working_set_window_s: float
    working_set_tokens: dict[str, float]
    working_set_series: list[tuple[float, int]]
    skipped: int

    def to_dict(self) -> dict:
        """Plain JSON: a figure the trace cannot give (a rate over a span of 0 s, a hit rate without block
        ids) is null, never NaN."""
        return {k: None if isinstance(v, float) and v != v else v for k, v in asdict(self).items()}


def trace_stats(trace: Trace, arrival: ArrivalModel | None = None, window: float = 300.0) -> TraceStats:
    arrival = arrival or ArrivalModel.default_for(trace)
    arrivals = arrival_times(trace, arrival)
    order = replay_order(arrivals)
    total_in = int(trace.input_tokens.sum())
    hits_global = infinite_cache_hits(trace, order, per_session=False)
    hits_session = infinite_cache_hits(trace, order, per_session=True)
    t_start = float(arrivals.min()) if len(arrivals) else 0.0
    t_end = float(np.max(arrivals + np.nan_to_num(trace.api_time, nan=0.0))) if len(arrivals) else 0.0
    duration = t_end - t_start
    per_s = 1 / duration if duration > 0 else float("nan")  # every request at one instant: no rate to offer
    roots = root_sessions(trace)
    is_sub = roots != np.arange(trace.n_sessions)
    win_t, win_tokens = working_set(trace, arrivals, window)

    def ratio(hits: np.ndarray) -> float:
        return float(hits.sum()) / total_in if total_in and trace.has_block_ids else float("nan")

    return TraceStats(
        source=trace.source,
        arrival=arrival.describe(),
        requests=trace.n_requests,
        sessions=trace.n_sessions,
        top_level_sessions=int((~is_sub).sum()),
        subagents=int(is_sub.sum()),
        subagent_requests=int(is_sub[trace.session].sum()),
        input_tokens=total_in,
        output_tokens=int(trace.output_tokens.sum()),
        input=distribution(trace.input_tokens),
        output=distribution(trace.output_tokens),
        share_over_128k=float(np.mean(trace.input_tokens > LONG_CONTEXT)) if trace.n_requests else float("nan"),
        hit_rate_per_session=ratio(hits_session),
        hit_rate_global=ratio(hits_global),
        duration_s=duration,
        offered_input_tok_s=total_in * per_s,
        offered_uncached_tok_s=(total_in - int(hits_global.sum())) * per_s,
        offered_output_tok_s=float(trace.output_tokens.sum()) * per_s,
        working_set_window_s=window,
        working_set_tokens=distribution(win_tokens),
        working_set_series=[(float(t), int(n)) for t, n in zip(win_t, win_tokens, strict=True)],
        skipped=len(trace.skipped),
    )


@dataclass(slots=True, frozen=True)
class FitRow:
    figure: str
    generated: float
    real: float  # NaN: the reference does not state it
    dossier: float

    def ratio(self, ref: float) -> float:
        return self.generated / ref if ref == ref and ref else float("nan")


def context_figures(trace: Trace) -> dict[str, float]:
    """The figures that size a KV cache for agents: the median context request by request and token by token
    (half of all prompt tokens are in requests at most this long), and the shares of requests over 128k and 400k."""
    x = np.sort(trace.input_tokens.astype(np.float64))
    if not len(x):
        return dict.fromkeys(("request_median", "token_weighted_median", "share_over_128k", "share_over_400k"),
                             float("nan"))
    cum = np.cumsum(x)
    return {"request_median": percentile(x, 50), "token_weighted_median": float(x[np.searchsorted(cum, cum[-1] / 2)]),
            "share_over_128k": float(np.mean(x > LONG_CONTEXT)), "share_over_400k": float(np.mean(x > VERY_LONG_CONTEXT))}


def fit_figures(generated: Trace, real: Trace) -> list[FitRow]:
    """The generated workload's context figures beside a real trace's and the dossier's."""
    g, r = context_figures(generated), context_figures(real)
    return [FitRow(k, g[k], r[k], DOSSIER.get(k, float("nan"))) for k in g]
