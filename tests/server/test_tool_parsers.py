"""Tool-call parsers: whole replies, and the same replies fed in arbitrary pieces (as a stream decodes them)."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentkv.server.tool_parsers import Parsed, make_parser, parse_all

HERMES = ('Let me look.\n<tool_call>\n{"name": "read_file", "arguments": {"path": "a.py"}}\n</tool_call>\n'
          '<tool_call>{"name": "grep", "arguments": {"pattern": "x < 1 && y", "n": 3}}</tool_call>')
LLAMA = '<|python_tag|>{"name": "read_file", "parameters": {"path": "a.py"}}; {"name": "ls", "parameters": {}}'


def fed(name: str, pieces: list[str]) -> Parsed:
    parser, out = make_parser(name), Parsed()
    for p in pieces:
        out += parser.feed(p)
    out += parser.finish()
    return out


def test_hermes_content_and_two_calls():
    out = parse_all("hermes", HERMES)
    assert out.content == "Let me look.\n\n"
    assert [(c.index, c.name, json.loads(c.arguments)) for c in out.calls] == [
        (0, "read_file", {"path": "a.py"}), (1, "grep", {"pattern": "x < 1 && y", "n": 3})]


def test_hermes_bad_json_stays_content_verbatim():
    text = 'ok <tool_call>{"name": "f", "arguments": {oops}}</tool_call> bye'
    out = parse_all("hermes", text)
    assert out.calls == [] and out.content == text


def test_hermes_arguments_as_json_string_and_unclosed_call():
    out = parse_all("hermes", '<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}')  # cut by max_tokens
    assert [(c.name, json.loads(c.arguments)) for c in out.calls] == [("f", {"a": 1})]
    assert parse_all("hermes", "<tool_call>{\"name\": \"f\"").content == "<tool_call>{\"name\": \"f\""


def test_hermes_holds_back_a_partial_tag_only():
    p = make_parser("hermes")
    assert p.feed("hello <tool").content == "hello "
    assert p.feed("box").content == "<toolbox"  # not a tag after all: released


def test_llama3_calls_and_plain_text():
    out = parse_all("llama3_json", LLAMA)
    assert out.content == "" and [c.name for c in out.calls] == ["read_file", "ls"]
    assert json.loads(out.calls[0].arguments) == {"path": "a.py"}
    assert parse_all("llama3_json", "Sure, {x} is fine").content == "Sure, {x} is fine"
    bad = '{"name": "f", "parameters": {"a": 1}} and then prose'
    out = parse_all("llama3_json", bad)
    assert out.calls == [] and out.content == bad


def test_llama3_plain_text_streams_at_once():
    p = make_parser("llama3_json")
    assert p.feed("  ").content == ""
    assert p.feed("Hi").content == "  Hi"
    assert p.feed(" there").content == " there"


def test_unknown_parser_is_named():
    with pytest.raises(ValueError, match=r"unknown tool-call parser 'x'.*hermes"):
        make_parser("x")


@given(st.sampled_from([("hermes", HERMES), ("llama3_json", LLAMA), ("hermes", "plain <tool_ text only"),
                        ("llama3_json", "  plain reply")]),
       st.lists(st.integers(0, 200), max_size=12))
def test_any_split_parses_like_the_whole(case, cuts):
    name, text = case
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in itertools.pairwise(bounds)]
    whole, streamed = parse_all(name, text), fed(name, pieces)
    assert streamed.content == whole.content
    assert [(c.index, c.name, c.arguments) for c in streamed.calls] == [(c.index, c.name, c.arguments) for c in whole.calls]
