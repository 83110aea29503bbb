"""Tool calls parsed out of a model's text, streamed: each parser is fed the reply's text as it is decoded
and hands back content to show and tool calls as each one completes.

Formats (vLLM's `--tool-call-parser` names):
- `hermes` (Qwen2.5, Qwen3, Hermes): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, any number,
  with content around them; a call that is not valid JSON is kept as content, verbatim.
- `llama3_json` (Llama 3.1+): the whole reply is one or more `{"name": ..., "parameters": {...}}` objects
  separated by `;` (after an optional `<|python_tag|>`); a reply that starts with `{` is held back until it
  ends, then is either all tool calls or all content.
A call is emitted whole (name and arguments together), only once it parsed: a client never sees a name whose
arguments later turn out to be garbage.

Each format also says what a forced call looks like (`grammar`): a Lark grammar, with each tool's JSON schema
embedded, that constrained decoding (engine/grammar.py) holds the reply to when a client forces a tool.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ParsedCall:
    index: int
    name: str
    arguments: str  # a JSON object, as text


@dataclass(slots=True)
class Parsed:
    content: str = ""
    calls: list[ParsedCall] = field(default_factory=list)

    def __iadd__(self, other: Parsed) -> Parsed:
        self.content += other.content
        self.calls += other.calls
        return self


def rebased(schema: Any, root: str) -> Any:
    """A tool's schema moved to `root` of the call's schema: its local `$ref`s ("#/$defs/Item", as Pydantic
    writes every nested model; "#" for recursion) rewritten to point there, so they resolve as in the tool's
    own schema (bodies cap the nesting, so the recursion here is bounded)."""
    if isinstance(schema, dict):
        return {k: root + v[1:] if k == "$ref" and isinstance(v, str) and v.startswith("#") else rebased(v, root)
                for k, v in schema.items()}
    if isinstance(schema, list):
        return [rebased(v, root) for v in schema]
    return schema


class ToolParser:
    """Feed text pieces in order, then `finish()`; the sum of what they return is the whole reply."""

    ARGUMENTS = "arguments"  # the key the format writes the arguments under
    WRAP: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())  # what surrounds one call, piece by piece
    SEPARATOR = "\n"  # between parallel calls

    def __init__(self) -> None:
        self.n_calls = 0

    @classmethod
    def grammar(cls, tools: list[dict[str, Any]], parallel: bool, literal: Callable[[str], str]) -> str:
        """A reply of one call (more with `parallel`) to one of `tools` (OpenAI's shape), arguments valid
        against that tool's schema: a Lark grammar for llguidance (`literal` writes a piece of text in it)."""
        from agentkv.engine.grammar import JSON_STYLE

        calls = [{"type": "object", "properties": {"name": {"const": t["function"]["name"]},
                                                   cls.ARGUMENTS: {"$ref": f"#/$defs/tool{i}"}},
                  "required": ["name", cls.ARGUMENTS], "additionalProperties": False} for i, t in enumerate(tools)]
        schema = calls[0] if len(calls) == 1 else {"anyOf": calls}
        schema["$defs"] = {f"tool{i}": rebased(t["function"].get("parameters") or {"type": "object"},
                                               f"#/$defs/tool{i}") for i, t in enumerate(tools)}
        before, after = (" ".join(map(literal, w)) for w in cls.WRAP)
        call = f"{before} %json {json.dumps({**schema, 'x-guidance': JSON_STYLE})} {after}"
        more = f" ({literal(cls.SEPARATOR)} call)*" if parallel else ""
        return f"start: call{more}\ncall: {call}"

    def feed(self, text: str) -> Parsed:
        raise NotImplementedError

    def finish(self) -> Parsed:
        raise NotImplementedError

    def _call(self, obj: object) -> ParsedCall | None:
        """A call from a decoded JSON object, or None if it is not one."""
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
            return None
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):  # some models write the arguments as a JSON string
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                return None
        if not isinstance(args, dict):
            return None
        call = ParsedCall(self.n_calls, obj["name"], json.dumps(args, ensure_ascii=False))
        self.n_calls += 1
        return call


class HermesParser(ToolParser):
    OPEN, CLOSE = "<tool_call>", "</tool_call>"
    WRAP = (("<tool_call>", "\n"), ("\n", "</tool_call>"))  # as Qwen's template writes calls in the history

    def __init__(self) -> None:
        super().__init__()
        self.buf = ""
        self.in_call = False

    def feed(self, text: str) -> Parsed:
        self.buf += text
        out = Parsed()
        while True:
            if self.in_call:
                end = self.buf.find(self.CLOSE)
                if end < 0:
                    return out
                out += self._close(self.buf[:end], self.CLOSE)
                self.buf, self.in_call = self.buf[end + len(self.CLOSE) :], False
                continue
            start = self.buf.find(self.OPEN)
            if start < 0:
                keep = partial_suffix(self.buf, self.OPEN)  # a tag may be arriving in pieces
                out.content += self.buf[: len(self.buf) - keep]
                self.buf = self.buf[len(self.buf) - keep :]
                return out
            out.content += self.buf[:start]
            self.buf, self.in_call = self.buf[start + len(self.OPEN) :], True

    def finish(self) -> Parsed:
        out = self._close(self.buf, "") if self.in_call else Parsed(self.buf)  # unclosed: the reply was cut
        self.buf, self.in_call = "", False
        return out

    def _close(self, body: str, close: str) -> Parsed:
        try:
            call = self._call(json.loads(body))
        except json.JSONDecodeError:
            call = None
        return Parsed(calls=[call]) if call else Parsed(self.OPEN + body + close)


class Llama3JsonParser(ToolParser):
    TAG = "<|python_tag|>"
    ARGUMENTS, SEPARATOR = "parameters", "; "

    def __init__(self) -> None:
        super().__init__()
        self.buf = ""
        self.mode = ""  # "", "calls?" (held until the end) or "content"

    def feed(self, text: str) -> Parsed:
        if self.mode == "content":
            return Parsed(text)
        self.buf += text
        stripped = self.buf.lstrip()
        head = stripped.removeprefix(self.TAG).lstrip()
        if not head or (len(stripped) < len(self.TAG) and self.TAG.startswith(stripped)):
            return Parsed()  # nothing decisive yet (or a tag arriving in pieces)
        if head[0] == "{":
            self.mode = "calls?"
            return Parsed()
        self.mode, out, self.buf = "content", self.buf, ""
        return Parsed(out)

    def finish(self) -> Parsed:
        text, self.buf = self.buf, ""
        if self.mode == "content" or not text:
            return Parsed(text)
        body = text.strip().removeprefix(self.TAG)
        calls, pos, dec = [], 0, json.JSONDecoder()
        while pos < len(body):
            try:
                obj, pos = dec.raw_decode(body, pos)
            except json.JSONDecodeError:
                break
            call = self._call(obj)
            if call is None:
                break
            calls.append(call)
            while pos < len(body) and body[pos] in " \t\r\n;":
                pos += 1
        if calls and pos >= len(body):
            return Parsed(calls=calls)
        self.n_calls -= len(calls)
        return Parsed(text)


PARSERS: dict[str, type[ToolParser]] = {"hermes": HermesParser, "llama3_json": Llama3JsonParser}


def make_parser(name: str) -> ToolParser:
    if name not in PARSERS:
        raise ValueError(f"unknown tool-call parser {name!r} (choose from {', '.join(PARSERS)})")
    return PARSERS[name]()


def feed(parser: ToolParser | None, text: str, finished: bool) -> Parsed:
    """One streamed piece through `parser` (None: no tools, all content), finishing it with the last piece."""
    if parser is None:
        return Parsed(text)
    out = parser.feed(text)
    if finished:
        out += parser.finish()
    return out


def parse_all(name: str, text: str) -> Parsed:
    """The whole reply at once: what any split of it into streamed pieces must parse to (the server streams
    every reply through `Reply`, whole or not, and parses it only there)."""
    parser = make_parser(name)
    out = parser.feed(text)
    out += parser.finish()
    return out


def partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0
