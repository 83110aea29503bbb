"""A model's context window applied to a trace: what a client does with a request its model cannot take.

A request needs its prompt and its reply inside the window. Traces record what happened on *some* model
(Claude Code sessions reach 900k tokens), so before a deployment serves a trace, each session is fitted to
the deployment's window, one of three ways:

- compact (what agent clients do): at the first request that would not fit, the conversation is summarised
  to `COMPACTED_SHARE` of the window and continues from there; every later request keeps what it added since,
  on top of the summary, until it reaches the window again. A summary is new text: its blocks are fresh, and
  the requests after it share them (and what they add) with each other.
- reject: the API refuses the request (HTTP 400) and its session ends there; it and the session's later
  requests are not served.
- truncate: the prompt loses its oldest tokens down to the window (vLLM's `truncate_prompt_tokens`); a cut
  prompt starts with other tokens, so it shares no block with anything.

Nothing is dropped silently: `WindowFit` counts each case, and served + rejected is the trace.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from agentkv.workload.blocklog import from_lists
from agentkv.workload.trace import Trace

OVER_WINDOW = ("compact", "reject", "truncate")
# context after a compaction, over the window: the synthetic generator's median compacted share (context after
# a compaction over the context before it, fitted to the shared Claude Code traces), taken at the window
COMPACTED_SHARE = 0.45


@dataclass(slots=True, frozen=True)
class WindowFit:
    window: int
    mode: str
    requests: int
    input_tokens: int
    over: int  # requests whose recorded prompt + reply exceed the window
    over_tokens: int  # their recorded prompt tokens
    compactions: int  # summaries made (compact)
    compacted: int  # requests served on a compacted context (compact)
    truncated: int  # requests served cut to the window (truncate)
    rejected: int  # requests not served (reject; or a reply longer than the window)

    @property
    def served(self) -> int:
        return self.requests - self.rejected

    @property
    def over_share(self) -> float:
        return self.over / self.requests if self.requests else 0.0

    @property
    def over_token_share(self) -> float:
        return self.over_tokens / self.input_tokens if self.input_tokens else 0.0

    def describe(self) -> str:
        """One line for the report: what was over the window and what became of it."""
        if not self.over:
            return f"every request fits the {self.window:,}-token window"
        fate = {"compact": f"{self.compactions:,} compactions; {self.compacted:,} requests served on a "
                           "compacted context",
                "truncate": f"{self.truncated:,} truncated to the window",
                "reject": f"{self.rejected:,} requests not served (rejected with the rest of their session)"}
        text = (f"{self.over_share:.1%} of requests ({self.over:,}) and {self.over_token_share:.0%} of input "
                f"tokens are over the {self.window:,}-token window; --over-window {self.mode}: {fate[self.mode]}")
        if self.mode != "reject" and self.rejected:
            text += f"; {self.rejected:,} not served (a reply longer than the window)"
        return text


def fit_window(trace: Trace, window: int, mode: str = "compact") -> tuple[Trace, WindowFit]:
    """`trace` with every request inside `window` tokens (prompt + reply), and the count of what it took."""
    if mode not in OVER_WINDOW:
        raise ValueError(f"--over-window: {mode!r} is not one of {', '.join(OVER_WINDOW)}")
    if window < 2 * trace.block_size:
        raise ValueError(f"context window {window} is smaller than two blocks of {trace.block_size}")
    need = trace.input_tokens + np.maximum(trace.output_tokens, 1)
    over = need > window
    counts = dict(compactions=0, compacted=0, truncated=0)
    if not over.any():
        return trace, _fit(trace, window, mode, over, counts, 0)
    inputs = trace.input_tokens.copy()
    ids: dict[int, np.ndarray] = {}  # the requests whose blocks change; the rest keep their recorded ones
    keep = np.ones(trace.n_requests, dtype=bool)
    fresh = _Fresh(trace.n_block_ids)
    bounds = trace.session_bounds()
    for s in range(trace.n_sessions):
        rows = range(int(bounds[s]), int(bounds[s + 1]))
        if mode == "compact":
            _compact(trace, rows, window, inputs, ids, keep, fresh, counts)
        else:
            for i in rows:
                out = max(int(trace.output_tokens[i]), 1)
                if need[i] <= window:
                    continue
                if mode == "reject" or out >= window:
                    keep[i:rows.stop] = False
                    break
                inputs[i] = window - out
                ids[i] = fresh.take(inputs[i] // trace.block_size if trace.has_block_ids else 0)
                counts["truncated"] += 1
    fitted = _rebuild(trace, inputs, ids, keep, window, mode)
    return fitted, _fit(trace, window, mode, over, counts, int((~keep).sum()))


def _compact(trace: Trace, rows: range, window: int, inputs: np.ndarray, ids: dict[int, np.ndarray],
             keep: np.ndarray, fresh: _Fresh, counts: dict[str, int]) -> None:
    """One session under compaction: `anchor` is the recorded request the current summary replaced."""
    bs = trace.block_size
    summary_tokens = int(COMPACTED_SHARE * window) // bs * bs
    anchor, summary, remap = -1, np.zeros(0, dtype=np.int64), {}
    for i in rows:
        recorded, out = int(trace.input_tokens[i]), max(int(trace.output_tokens[i]), 1)
        if anchor >= 0 and recorded < int(trace.input_tokens[anchor]):
            anchor = -1  # the client compacted (or cleared) on its own: the recorded context is the context
        added = recorded - int(trace.input_tokens[anchor]) if anchor >= 0 else 0
        length = summary_tokens + added if anchor >= 0 else recorded
        if length + out > window:
            if summary_tokens + out > window:
                keep[i:rows.stop] = False
                return
            summary = fresh.take(summary_tokens // bs if trace.has_block_ids else 0)
            anchor, remap, length = i, {}, summary_tokens
            counts["compactions"] += 1
        if anchor < 0:
            continue
        inputs[i] = length
        counts["compacted"] += 1
        if not trace.has_block_ids:
            continue
        tail = trace.blocks(i)[int(trace.input_tokens[anchor]) // bs:]
        mapped = np.array([remap.setdefault(int(b), fresh.one()) for b in tail], dtype=np.int64)
        n = length // bs - len(summary)
        ids[i] = np.concatenate([summary, mapped[:n], fresh.take(max(n - len(mapped), 0))])


class _Fresh:
    """New block ids past the trace's own: text no recorded request had."""

    def __init__(self, start: int) -> None:
        self.next = start

    def take(self, n: int) -> np.ndarray:
        out = np.arange(self.next, self.next + n, dtype=np.int64)
        self.next += n
        return out

    def one(self) -> int:
        self.next += 1
        return self.next - 1


def _rebuild(trace: Trace, inputs: np.ndarray, ids: dict[int, np.ndarray], keep: np.ndarray, window: int,
             mode: str) -> Trace:
    """The kept requests, their block log written anew (a changed request is a new parent for the next)."""
    rows = np.flatnonzero(keep)
    log = from_lists(trace.session[rows], (ids[i] if i in ids else trace.blocks(i) for i in rows.tolist()))
    _, dense = np.unique(log.ids, return_inverse=True)  # the trace's ids stay dense
    return replace(
        trace, session=trace.session[rows], time=trace.time[rows], input_tokens=inputs[rows],
        output_tokens=trace.output_tokens[rows], think_time=trace.think_time[rows], api_time=trace.api_time[rows],
        finish=trace.finish[rows], model=trace.model[rows], block_log=log.with_ids(dense),
        source=f"{trace.source} (fitted to a {window:,}-token window: {mode})")


def _fit(trace: Trace, window: int, mode: str, over: np.ndarray, counts: dict[str, int], rejected: int) -> WindowFit:
    return WindowFit(window, mode, trace.n_requests, int(trace.input_tokens.sum()), int(over.sum()),
                     int(trace.input_tokens[over].sum()), rejected=rejected, **counts)
