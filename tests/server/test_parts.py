"""The server's parts that need no engine: API keys, public prefixes, conversations as templates read them."""

from __future__ import annotations

import json

import pytest

from agentkv.engine.tokenizer import Tokenizer
from agentkv.server import anthropic_protocol as anth
from agentkv.server import openai_protocol as oai
from agentkv.server.chat import anthropic_messages, openai_messages
from agentkv.server.errors import APIError
from agentkv.server.tenants import PublicPrefixes, load_api_keys
from agentkv.server.tool_parsers import parse_all
from tests.engine.conftest import write_tokenizer

READ_FILE = {"type": "function", "function": {"name": "read_file", "description": "Read a file; size < 1 MB",
                                               "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}


def test_api_keys_file(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# key tenant\nsk-a  acme\n\nsk-b globex\n")
    assert load_api_keys(str(f)) == {"sk-a": "acme", "sk-b": "globex"}
    f.write_text("sk-a acme\nsk-secret\n")
    with pytest.raises(ValueError, match=r"keys:2: expected two fields 'KEY TENANT', found 1") as e:
        load_api_keys(str(f))
    assert "sk-secret" not in str(e.value)  # keys are never echoed
    f.write_text("sk-a acme\nsk-a globex\n")
    with pytest.raises(ValueError, match=r"keys:2: this key is already listed \(for tenant 'acme'\)"):
        load_api_keys(str(f))
    f.write_text("# nothing\n")
    with pytest.raises(ValueError, match="no API keys"):
        load_api_keys(str(f))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    folder = tmp_path_factory.mktemp("tok")
    write_tokenizer(folder)
    return Tokenizer(str(folder))


def test_public_prefix_covers_the_operator_text_only(tmp_path, tokenizer):
    f = tmp_path / "system.txt"
    f.write_text("the agent reads a file and calls a tool")
    public = PublicPrefixes.load([str(f)], tokenizer)
    shared = [{"role": "system", "content": f.read_text()}, {"role": "user", "content": "fix bug"}]
    ids = tokenizer.encode_chat(shared)
    n = public.public_tokens(ids)
    head = tokenizer.encode(tokenizer.render_chat(shared[:1], add_generation_prompt=False).split(" <|eot_id|>")[0],
                            add_special_tokens=False)
    assert n == len(head) and ids[:n] == head  # through the system text, not into the tenant's message
    other = tokenizer.encode_chat([{"role": "system", "content": "the agent reads a file and writes code"}])
    assert public.public_tokens(other) == 0  # a partial match shares nothing
    raw = tokenizer.encode("the agent reads a file and calls a tool then writes code")
    assert public.public_tokens(raw) == len(tokenizer.encode(f.read_text()))  # completions prompts too


def test_public_prefix_file_errors(tmp_path, tokenizer):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(ValueError, match=r"empty\.txt: the file is empty"):
        PublicPrefixes.load([str(empty)], tokenizer)
    with pytest.raises(FileNotFoundError):
        PublicPrefixes.load([str(tmp_path / "missing.txt")], tokenizer)


def test_openai_conversation_with_tool_calls():
    req = oai.ChatCompletionRequest.model_validate({"model": "m", "tools": [READ_FILE], "messages": [
        {"role": "developer", "content": [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]},
        {"role": "user", "content": "open a.py"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "read_file", "arguments": '{"path": "a.py"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "print(1)"}]})
    msgs, tools = openai_messages(req)
    assert msgs[0] == {"role": "system", "content": "be brief"}
    assert msgs[2]["tool_calls"][0]["function"] == {"name": "read_file", "arguments": {"path": "a.py"}}
    assert msgs[3] == {"role": "tool", "content": "print(1)", "tool_call_id": "call_1"}
    assert tools == [READ_FILE]
    assert openai_messages(req.model_copy(update={"tool_choice": "none"}))[1] is None


def test_openai_bad_tool_arguments_name_the_field():
    req = oai.ChatCompletionRequest.model_validate({"model": "m", "messages": [
        {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{nope"}}]}]})
    with pytest.raises(APIError, match=r"messages.0.tool_calls.0.function.arguments: not valid JSON") as e:
        openai_messages(req)
    assert e.value.status == 400 and e.value.param == "messages.0.tool_calls.0.function.arguments"


def test_anthropic_conversation_with_tool_use_and_results():
    req = anth.MessagesRequest.model_validate({"model": "m", "max_tokens": 8, "system": [{"type": "text", "text": "sys"}],
        "tools": [{"name": "read_file", "input_schema": {"type": "object"}}], "messages": [
            {"role": "user", "content": "open a.py"},
            {"role": "assistant", "content": [{"type": "text", "text": "Sure."},
                                              {"type": "tool_use", "id": "toolu_1", "name": "read_file", "input": {"path": "a.py"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "no such file",
                                          "is_error": True}, {"type": "text", "text": "try b.py"}]}]})
    msgs, tools = anthropic_messages(req)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "tool", "user"]
    assert msgs[2]["tool_calls"] == [{"id": "toolu_1", "type": "function",
                                      "function": {"name": "read_file", "arguments": {"path": "a.py"}}}]
    assert msgs[3] == {"role": "tool", "tool_call_id": "toolu_1", "content": "Error: no such file"}
    assert tools[0]["function"]["name"] == "read_file" and tools[0]["function"]["parameters"] == {"type": "object"}


def test_template_renders_tools_and_calls_that_parse_back(tool_dir):
    """What the template writes for an assistant's call is what the hermes parser reads: a round trip."""
    tok = Tokenizer(str(tool_dir))
    call = {"id": "c", "type": "function", "function": {"name": "read_file", "arguments": {"path": "a.py"}}}
    text = tok.render_chat([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "", "tool_calls": [call]}],
                           add_generation_prompt=False, tools=[READ_FILE])
    assert json.dumps(READ_FILE) in text  # tojson as HF writes it: '<' is not HTML-escaped
    turn = text.split("<|im_start|>assistant")[1].split("<|im_end|>")[0]
    parsed = parse_all("hermes", turn)
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [("read_file", {"path": "a.py"})]
