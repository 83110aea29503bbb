"""A reply's thinking, split from its answer as it streams: templates with a thinking mode (Qwen3's
`enable_thinking`) let the model open its reply with `<think>...</think>`; with thinking on, that text is an
Anthropic `thinking` block, the rest the answer (tool calls included). A reply that does not open with
`<think>` is all answer."""

from __future__ import annotations

from dataclasses import dataclass

from agentkv.server.tool_parsers import partial_suffix

OPEN, CLOSE = "<think>", "</think>"


@dataclass(slots=True)
class ThinkingSplitter:
    buf: str = ""
    state: str = "start"  # "start" (undecided), "thinking", "after" (the whitespace after it) or "answer"

    def feed(self, text: str, finished: bool = False) -> tuple[str, str]:
        """(thinking, answer) new in this piece; `finished` with the last piece releases what is held."""
        thought, answer = self._feed(text)
        if finished:
            held, self.buf = self.buf, ""
            if self.state == "thinking":
                thought += held
            else:
                answer += held
        return thought, answer

    def _feed(self, text: str) -> tuple[str, str]:
        if self.state == "after":
            text = text.lstrip()
            self.state = "answer" if text else "after"
        if self.state in ("after", "answer"):
            return "", text
        self.buf += text
        if self.state == "start":
            head = self.buf.lstrip()
            if OPEN.startswith(head):
                return "", ""  # "<thi" may still become "<think>"
            if not head.startswith(OPEN):
                self.state, answer, self.buf = "answer", self.buf, ""
                return "", answer
            self.state, self.buf = "thinking", head[len(OPEN):]
        end = self.buf.find(CLOSE)
        if end >= 0:
            thought, answer = self.buf[:end], self.buf[end + len(CLOSE):].lstrip()
            self.state, self.buf = "answer" if answer else "after", ""
            return thought, answer
        keep = partial_suffix(self.buf, CLOSE)
        thought, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        return thought, ""
