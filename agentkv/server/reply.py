"""The one reply state machine every API's renderer reads: the engine's deltas in, typed events out
(thinking, its end, text, a tool call), usage accumulated once, and the stop string the engine matched.

A streamed reply and a whole one go through the same machine (`whole` just gathers its events), so both
split thinking and parse tool calls the same way, once. The engine's cache policy needs that parse too (a reply
that called a tool is followed by the agent in seconds, one that did not by a person): at the reply's end the
machine tells it how the reply ended (`tell`), rather than the engine parsing the text a second time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from agentkv.server.errors import APIError
from agentkv.server.jobs import Result
from agentkv.server.thinking import ThinkingSplitter
from agentkv.server.tool_parsers import ParsedCall, ToolParser, feed, make_parser


@dataclass(slots=True)
class Thought:
    text: str


@dataclass(slots=True)
class ThoughtDone:
    """The thinking is over (the answer began, or the reply ended)."""


@dataclass(slots=True)
class Text:
    text: str


@dataclass(slots=True)
class Call:
    call: ParsedCall


Event = Thought | ThoughtDone | Text | Call


class Reply:
    """One reply's state: `feed` each delta, render the events it returns. `tell(kind)`, with a tool parser, hears
    how the finished reply ended ("tool_calls" or "stop") before its last events are rendered."""

    __slots__ = ("calls", "parser", "result", "splitter", "tell", "thinking")

    def __init__(self, tool_parser: str | None, think: bool, tell: Callable[[str], None] | None = None) -> None:
        self.parser: ToolParser | None = make_parser(tool_parser) if tool_parser else None
        self.tell = tell
        self.splitter = ThinkingSplitter() if think else None
        self.result = Result()
        self.calls = 0
        self.thinking = False  # a thought is open

    def feed(self, d: Any) -> list[Event]:
        self.result.add(d)
        thought, answer = self.splitter.feed(d.text, d.finished) if self.splitter else ("", d.text)
        events: list[Event] = [Thought(thought)] if thought else []
        self.thinking = self.thinking or bool(thought)
        if self.thinking and (answer or d.finished):
            events.append(ThoughtDone())
            self.thinking = False
        piece = feed(self.parser, answer, d.finished)
        if piece.content:
            events.append(Text(piece.content))
        events += [Call(c) for c in piece.calls]
        self.calls += len(piece.calls)
        if d.finished and self.parser is not None and self.tell is not None and d.finish_reason != "abort":
            self.tell("tool_calls" if self.calls else "stop")
        return events

    @property
    def stop_string(self) -> str | None:
        return self.result.stop_string

    @property
    def finish_reason(self) -> str:
        """OpenAI's: a reply that stopped after calling tools finished with "tool_calls"."""
        r = self.result.finish_reason
        return "tool_calls" if self.calls and r == "stop" else r

    @property
    def stop_reason(self) -> str:
        """Anthropic's."""
        if self.result.finish_reason == "length":
            return "max_tokens"
        return "tool_use" if self.calls else "stop_sequence" if self.stop_string else "end_turn"


@dataclass(slots=True)
class Whole:
    """A whole reply, its events gathered."""

    reply: Reply
    thought: str = ""
    content: str = ""
    calls: list[ParsedCall] = field(default_factory=list)

    @property
    def result(self) -> Result:
        return self.reply.result


async def whole(reply: Reply, deltas: AsyncIterator[Any]) -> Whole:
    out, thought, content = Whole(reply), [], []
    async for d in deltas:
        for e in reply.feed(d):
            if isinstance(e, Thought):
                thought.append(e.text)
            elif isinstance(e, Text):
                content.append(e.text)
            elif isinstance(e, Call):
                out.calls.append(e.call)
    if reply.result.finish_reason == "abort":
        raise APIError(503, "the request was aborted (server shutting down)", code="aborted")
    out.thought, out.content = "".join(thought), "".join(content)
    return out
