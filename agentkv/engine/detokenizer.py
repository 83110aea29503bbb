"""A reply's text, made once as its tokens come: incremental detokenization (vLLM's window of two offsets)
and stop strings searched only where a new piece could complete one.

Decoding the whole reply on every token costs time quadratic in its length; decoding a short window
(`prefix`..end, diffed against `prefix`..`read`) keeps multi-token characters and word-boundary spaces right
at a constant cost per token. The text a stream may show (`visible`) holds back the last `len(stop) - 1`
characters while the reply runs: they may still become a stop string, which is never shown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REPLACEMENT = "\ufffd"  # a window ending inside a multi-byte character decodes to this: wait for the rest


@dataclass(slots=True)
class Detokenizer:
    tokenizer: Any
    stops: tuple[str, ...] = ()
    ids: list[int] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)  # the text `take` handed out, piece by piece
    shown_chars: int = 0
    held: str = ""  # decoded, not yet handed out (cut before the stop string once one matched)
    matched: str | None = None  # the stop string that ended the reply
    prefix: int = 0  # the window: ids[prefix:read] decoded already, ids[read:] not yet
    read: int = 0

    @property
    def hold(self) -> int:
        """Characters a running reply keeps back: the longest stop string but one."""
        return max((len(s) for s in self.stops), default=1) - 1

    @property
    def text(self) -> str:
        return "".join(self.shown) + self.held

    def push(self, token: int) -> str | None:
        """Take one token of the reply; returns the stop string it completed, if it did."""
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        after = self.tokenizer.decode(self.ids[self.prefix :])
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return None
        self.held += after[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)
        return self._find_stop() if self.stops else None

    def _find_stop(self) -> str | None:
        """A stop string in what is held: the new piece and the `hold` characters before it (anything older
        was searched when it came), so the search is as long as the piece, not the reply."""
        hits = [(i, s) for s in self.stops if s and (i := self.held.find(s)) >= 0]
        if not hits:
            return None
        at, self.matched = min(hits)
        self.held = self.held[:at]
        return self.matched

    def take(self, finished: bool = False) -> str:
        """The text new since the last take that a stream may show: all of it once `finished`, else all but
        what may still begin a stop string."""
        keep = 0 if finished or not self.stops else self.hold
        n = max(0, len(self.held) - keep)
        out, self.held = self.held[:n], self.held[n:]
        if out:
            self.shown.append(out)
            self.shown_chars += len(out)
        return out
