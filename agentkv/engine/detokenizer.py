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
    text: str = ""  # decoded so far (cut before the stop string once one matched)
    matched: str | None = None  # the stop string that ended the reply
    prefix: int = 0  # the window: ids[prefix:read] decoded already, ids[read:] not yet
    read: int = 0

    @property
    def hold(self) -> int:
        return max((len(s) for s in self.stops), default=1) - 1

    def push(self, token: int) -> str | None:
        """Take one token of the reply; returns the stop string it completed, if it did."""
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self.prefix : self.read])
        after = self.tokenizer.decode(self.ids[self.prefix :])
        if len(after) <= len(before) or after.endswith(REPLACEMENT):
            return None
        start = len(self.text)
        self.text += after[len(before) :]
        self.prefix, self.read = self.read, len(self.ids)
        return self._find_stop(start) if self.stops else None

    def _find_stop(self, start: int) -> str | None:
        """A stop string ending in the new piece (`text[start:]`): only the last `hold` characters before it
        can begin one, so the search is as long as the piece, not the reply."""
        window = max(0, start - self.hold)
        hits = [(i, s) for s in self.stops if s and (i := self.text.find(s, window)) >= 0]
        if not hits:
            return None
        at, self.matched = min(hits)
        self.text = self.text[:at]
        return self.matched

    def visible(self) -> str:
        """What a stream may show while the reply runs: all but what may still begin a stop string."""
        return self.text[: max(0, len(self.text) - self.hold)] if self.stops else self.text
