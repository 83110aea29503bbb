"""Tool calls end to end: a checkpoint whose output is a tool call (see conftest), parsed by the server into
OpenAI `tool_calls` / Anthropic `tool_use`, whole and streamed, and a full round trip with the tool's result."""

from __future__ import annotations

import json
import time

import anthropic
import openai
import pytest

from agentkv.server.tool_parsers import HermesParser
from agentkv.workload.trace import FINISH_END, FINISH_TOOL
from tests.server.conftest import write_tool_checkpoint

READ_FILE = {"type": "function", "function": {"name": "read_file", "description": "Read a file",
                                               "parameters": {"type": "object", "properties": {"path": {"type": "string"}}}}}
ASK = [{"role": "user", "content": "please read the file"}]


@pytest.fixture(scope="module")
def tool_server(start, tool_dir):
    return start("--model", str(tool_dir), "--served-model-name", "tool", "--kv-cache-gb", "0.005",
                 "--policy", "agent")


@pytest.fixture(scope="module")
def oai(tool_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=tool_server.url + "/v1", api_key="none", max_retries=0)


def test_openai_tool_call_whole(oai):
    r = oai.chat.completions.create(model="tool", messages=ASK, tools=[READ_FILE], max_tokens=20)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "read_file"
    assert json.loads(call.function.arguments) == {"path": "a.py"}


def test_openai_tool_call_streamed_as_deltas(oai):
    chunks = list(oai.chat.completions.create(model="tool", messages=ASK, tools=[READ_FILE], max_tokens=20,
                                              stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    calls = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert [(c.index, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        (0, "read_file", {"path": "a.py"})]
    assert "".join(d.content or "" for d in deltas) == ""  # the call's text never leaks into content
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_without_tools_the_text_is_content(oai):
    r = oai.chat.completions.create(model="tool", messages=ASK, max_tokens=20)
    assert r.choices[0].finish_reason == "stop" and r.choices[0].message.tool_calls is None
    assert "<tool_call>" in r.choices[0].message.content
    none = oai.chat.completions.create(model="tool", messages=ASK, tools=[READ_FILE], tool_choice="none", max_tokens=20)
    assert none.choices[0].message.tool_calls is None


def test_round_trip_reaches_the_cache_policy(oai, tool_server):
    """The agent loop: call -> run the tool -> send its result. The second prompt extends the first (cache
    hit), and the engine's cache policy learned that the session's reply ended in a tool call."""
    first = oai.chat.completions.create(model="tool", messages=ASK, tools=[READ_FILE], max_tokens=20,
                                        extra_headers={"x-session-id": "agent-7"})
    call = first.choices[0].message.tool_calls[0]
    pauses = tool_server.engine.llm.cache.policy.kinds
    after_calls, after_ends = len(pauses[FINISH_TOOL].recent), len(pauses[FINISH_END].recent)
    history = [*ASK, {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
               {"role": "tool", "tool_call_id": call.id, "content": "print ( 1 )"}]
    second = oai.chat.completions.create(model="tool", messages=history, tools=[READ_FILE], max_tokens=20,
                                         extra_headers={"x-session-id": "agent-7"})
    # the pause before the second turn was filed as one after a tool call (the server's parse told the engine)
    assert len(pauses[FINISH_TOOL].recent) == after_calls + 1 and len(pauses[FINISH_END].recent) == after_ends
    assert second.usage.prompt_tokens > first.usage.prompt_tokens
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens // 16 * 16 - 16
    assert second.choices[0].finish_reason == "tool_calls"


@pytest.fixture
def feeds(monkeypatch) -> dict[int, list[str]]:
    """What each Hermes parser the server makes is fed: {parser: pieces}. The real parser runs."""
    fed: dict[int, list[str]] = {}
    real = HermesParser.feed

    def counted(self: HermesParser, text: str):
        fed.setdefault(id(self), []).append(text)
        return real(self, text)

    monkeypatch.setattr(HermesParser, "feed", counted)
    return fed


@pytest.mark.parametrize("api", ["chat", "messages", "responses"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_reply_is_parsed_once(oai, tool_server, feeds, api, stream):
    """One parser per request is fed the reply's text once, whole or streamed, in every API; the engine's cache
    policy still learns that a session's reply called a tool (from that one parse, not a second of its own)."""
    text = oai.chat.completions.create(model="tool", messages=ASK, max_tokens=20).choices[0].message.content
    assert not feeds and "<tool_call>" in text  # without tools nothing is parsed
    session = {"x-session-id": f"once-{api}-{stream}"}
    if api == "chat":
        r = oai.chat.completions.create(model="tool", messages=ASK, tools=[READ_FILE], max_tokens=20,
                                        stream=stream, extra_headers=session)
        names = [tc.function.name for ch in r for tc in ch.choices[0].delta.tool_calls or []] if stream else [
            tc.function.name for tc in r.choices[0].message.tool_calls]
    elif api == "messages":
        a = anthropic.Anthropic(base_url=tool_server.url, api_key="none", max_retries=0)
        r = a.messages.create(model="tool", max_tokens=20, messages=ASK, stream=stream, extra_headers=session,
                              tools=[{"name": "read_file", "input_schema": READ_FILE["function"]["parameters"]}])
        blocks = [e.content_block for e in r if e.type == "content_block_start"] if stream else r.content
        names = [b.name for b in blocks if b.type == "tool_use"]
    else:
        r = oai.responses.create(model="tool", input=ASK[0]["content"], max_output_tokens=20, stream=stream,
                                 tools=[{"type": "function", **READ_FILE["function"]}], extra_headers=session)
        items = [e.item for e in r if e.type == "response.output_item.done"] if stream else r.output
        names = [i.name for i in items if i.type == "function_call"]
    assert names == ["read_file"]
    assert len(feeds) == 1, f"{len(feeds)} parsers read the reply"
    assert "".join(*feeds.values()) == text  # fed each piece of the text once
    policy, number = tool_server.engine.llm.cache.policy, tool_server.engine.llm._sessions.get("/" + session["x-session-id"])
    deadline = time.monotonic() + 10  # the kind crosses to the engine thread in its inbox
    while policy.last_kind[number] != FINISH_TOOL and time.monotonic() < deadline:
        time.sleep(0.01)
    assert policy.last_kind[number] == FINISH_TOOL


def test_anthropic_tool_use_whole_streamed_and_round_trip(tool_server):
    a = anthropic.Anthropic(base_url=tool_server.url, api_key="none", max_retries=0)
    tools = [{"name": "read_file", "description": "Read a file", "input_schema": READ_FILE["function"]["parameters"]}]
    r = a.messages.create(model="tool", max_tokens=20, tools=tools, messages=ASK)
    assert r.stop_reason == "tool_use"
    (use,) = r.content
    assert use.type == "tool_use" and use.name == "read_file" and use.input == {"path": "a.py"}
    with a.messages.stream(model="tool", max_tokens=20, tools=tools, messages=ASK) as stream:
        kinds = [(e.type, getattr(getattr(e, "delta", None), "type", None)) for e in stream]
        final = stream.get_final_message()
    assert ("content_block_delta", "input_json_delta") in kinds
    assert final.stop_reason == "tool_use" and final.content[0].input == {"path": "a.py"}
    again = a.messages.create(model="tool", max_tokens=20, tools=tools, messages=[
        *ASK, {"role": "assistant", "content": [use.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "print ( 1 )"}]}])
    assert again.usage.cache_read_input_tokens >= 16 and again.stop_reason == "tool_use"


def test_llama3_json_parser(start, tmp_path_factory):
    script = ['{"name":', '"read_file",', '"parameters":', '{"path":', '"a.py"}}']
    folder = write_tool_checkpoint(tmp_path_factory.mktemp("llama3-tool"), script)
    srv = start("--model", str(folder), "--served-model-name", "tool", "--kv-cache-gb", "0.005",
                "--tool-call-parser", "llama3_json")
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
    for stream in (False, True):
        r = c.chat.completions.create(model="tool", messages=ASK, tools=[READ_FILE], max_tokens=20, stream=stream)
        if stream:
            chunks = list(r)
            calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
            finish = chunks[-1].choices[0].finish_reason
        else:
            calls, finish = r.choices[0].message.tool_calls, r.choices[0].finish_reason
        assert finish == "tool_calls"
        assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [("read_file", {"path": "a.py"})]
