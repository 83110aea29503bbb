"""Constrained decoding through the grammar engine, driven by the official clients: forced tool calls (OpenAI
`tool_choice` required / named, Anthropic any / tool) whose arguments validate against the tool's schema, and
`response_format` json_object / json_schema replies that parse, whole and streamed. The chat checkpoint's
unconstrained reply is plain text, so every JSON reply here is the grammar's doing."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.engine.conftest import CHAT_REPLY

ARGS = {"type": "object", "properties": {
    "path": {"type": "string"}, "line": {"type": "integer", "minimum": 1, "maximum": 999},
    "mode": {"enum": ["r", "w"]}, "flags": {"type": "array", "items": {"type": "boolean"}}},
    "required": ["path", "line", "mode", "flags"], "additionalProperties": False}
RUN = {"type": "object", "properties": {"cmd": {"type": "string", "minLength": 2}}, "required": ["cmd"],
       "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "read_file", "description": "Read", "parameters": ARGS}},
         {"type": "function", "function": {"name": "run", "description": "Run", "parameters": RUN}}]
SCHEMAS = {"read_file": ARGS, "run": RUN}
ASK = [{"role": "user", "content": "read the file"}]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 150},
                                           "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
          "required": ["name", "age", "tags"], "additionalProperties": False}


def valid(name: str, arguments: str | dict) -> None:
    jsonschema.validate(json.loads(arguments) if isinstance(arguments, str) else arguments, SCHEMAS[name])


def test_unconstrained_reply_is_text(chat_oai):
    r = chat_oai.chat.completions.create(model="chat", messages=ASK, tools=TOOLS, max_tokens=30, temperature=0)
    assert r.choices[0].message.content == CHAT_REPLY and r.choices[0].message.tool_calls is None


@pytest.mark.parametrize("stream", [False, True])
def test_openai_required_and_named(chat_oai, stream):
    for choice, names in [("required", {"read_file", "run"}),
                          ({"type": "function", "function": {"name": "run"}}, {"run"})]:
        kw = dict(model="chat", messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=200, temperature=0)
        if stream:
            chunks = list(chat_oai.chat.completions.create(**kw, stream=True))
            calls = [c.function for ch in chunks if ch.choices for c in ch.choices[0].delta.tool_calls or []]
            finish = chunks[-1].choices[0].finish_reason
        else:
            r = chat_oai.chat.completions.create(**kw)
            calls, finish = [c.function for c in r.choices[0].message.tool_calls], r.choices[0].finish_reason
        assert calls and finish == "tool_calls"
        for c in calls:
            assert c.name in names
            valid(c.name, c.arguments)


def test_sampled_forced_calls_stay_valid(chat_oai):
    """Sampled (seeded) forced calls are as valid as greedy ones."""
    for seed in range(4):
        r = chat_oai.chat.completions.create(model="chat", messages=ASK, tools=TOOLS, tool_choice="required",
                                        max_tokens=400, temperature=1.5, seed=seed, parallel_tool_calls=False)
        if r.choices[0].finish_reason == "length":
            continue  # a sampled string may run past max_tokens; what was produced is still a prefix
        (call,) = r.choices[0].message.tool_calls
        valid(call.function.name, call.function.arguments)


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_any_and_tool(chat_anth, stream):
    tools = [{"name": t["function"]["name"], "description": "x", "input_schema": t["function"]["parameters"]}
             for t in TOOLS]
    for choice, names in [({"type": "any"}, {"read_file", "run"}), ({"type": "tool", "name": "read_file"},
                                                                    {"read_file"})]:
        kw = dict(model="chat", max_tokens=200, tools=tools, tool_choice=choice, messages=ASK,
                  extra_body={"temperature": 0})
        if stream:
            with chat_anth.messages.stream(**kw) as s:
                msg = s.get_final_message()
        else:
            msg = chat_anth.messages.create(**kw)
        uses = [b for b in msg.content if b.type == "tool_use"]
        assert uses and msg.stop_reason == "tool_use"
        for u in uses:
            assert u.name in names
            valid(u.name, u.input)


@pytest.mark.parametrize("stream", [False, True])
def test_response_format(chat_oai, stream):
    formats = [({"type": "json_object"}, None),
               ({"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}, PERSON)]
    for fmt, schema in formats:
        kw = dict(model="chat", messages=ASK, response_format=fmt, max_tokens=200, temperature=0)
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in chat_oai.chat.completions.create(**kw, stream=True)
                           if c.choices)
        else:
            text = chat_oai.chat.completions.create(**kw).choices[0].message.content
        obj = json.loads(text)
        assert isinstance(obj, dict)
        if schema:
            jsonschema.validate(obj, schema)


def test_refusals_name_the_field(chat_oai):
    cases = [(dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "tool_choice"),
             (dict(tool_choice="required"), "tool_choice"),
             (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}}),
              "response_format")]
    for kw, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            chat_oai.chat.completions.create(model="chat", messages=ASK, max_tokens=5, **kw)
        assert e.value.body["param"] == param and param in e.value.body["message"]
