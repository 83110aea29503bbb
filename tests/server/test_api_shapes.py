"""What each API's official client expects of the server beyond completions: served names and aliases
(unknown: 404 listing them), `models.list` / `models.retrieve` in OpenAI's and in Anthropic's shape,
`request-id` / `x-request-id` on every response, and Anthropic `thinking` honoured by a template with a
thinking mode or refused, named, by one without."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from agentkv.server.thinking import ThinkingSplitter
from tests.engine.conftest import CHAT_REPLY
from tests.server.conftest import THINKING_TEMPLATE, write_tool_checkpoint

ASK = [{"role": "user", "content": "hello"}]


def test_models_in_each_shape(chat_oai, chat_anth):
    cards = chat_oai.models.list().data
    assert [(m.id, m.object, m.model_extra["root"]) for m in cards] == [("chat", "model", "chat"),
                                                                         ("chat-small", "model", "chat")]
    infos = chat_anth.models.list().data
    assert [(m.id, m.type, m.display_name) for m in infos] == [("chat", "model", "chat"),
                                                               ("chat-small", "model", "chat-small")]
    assert infos[0].created_at.year >= 2026
    assert chat_anth.models.retrieve("chat-small").id == "chat-small" and chat_oai.models.retrieve("chat").id == "chat"
    with pytest.raises(anthropic.NotFoundError):
        chat_anth.models.retrieve("claude-opus-4-1")


def test_aliases_answer_and_unknown_names_list_what_is_served(chat_oai, chat_anth):
    r = chat_oai.chat.completions.create(model="chat-small", messages=ASK, max_tokens=10, temperature=0)
    assert r.model == "chat-small" and r.choices[0].message.content == CHAT_REPLY
    m = chat_anth.messages.create(model="chat-small", max_tokens=10, messages=ASK)
    assert m.model == "chat-small"
    with pytest.raises(openai.NotFoundError) as e:
        chat_oai.chat.completions.create(model="gpt-4o", messages=ASK, max_tokens=5)
    assert "'chat', 'chat-small'" in e.value.body["message"] and e.value.body["code"] == "model_not_found"
    with pytest.raises(anthropic.NotFoundError) as e:
        chat_anth.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=ASK)
    assert "'chat', 'chat-small'" in e.value.message


def test_request_ids(chat_server, chat_oai, chat_anth):
    raw = chat_oai.chat.completions.with_raw_response.create(model="chat", messages=ASK, max_tokens=5)
    assert raw.headers["x-request-id"].startswith("req_") and raw.headers["request-id"] == raw.headers["x-request-id"]
    m = chat_anth.messages.with_raw_response.create(model="chat", max_tokens=5, messages=ASK)
    assert m.request_id and m.request_id.startswith("req_")
    with pytest.raises(anthropic.NotFoundError) as e:  # errors carry one too
        chat_anth.messages.create(model="nope", max_tokens=5, messages=ASK)
    assert e.value.request_id
    given = httpx.get(chat_server.url + "/v1/models", headers={"x-request-id": "trace-42"})
    assert given.headers["x-request-id"] == given.headers["request-id"] == "trace-42"


def test_thinking_goes_to_a_template_with_a_thinking_mode(chat_anth):
    on = chat_anth.messages.create(model="chat", max_tokens=10, messages=ASK, thinking={"type": "enabled",
                                                                                   "budget_tokens": 1024})
    off = chat_anth.messages.create(model="chat", max_tokens=10, messages=ASK, thinking={"type": "disabled"})
    plain = chat_anth.messages.create(model="chat", max_tokens=10, messages=ASK)
    assert _prompt(on) == _prompt(plain)
    assert _prompt(off) > _prompt(on)  # the template closed an empty think block for the model
    assert on.content[0].text == CHAT_REPLY


def test_thinking_comes_back_as_thinking_blocks(start, tmp_path):
    """A model that thinks first: with thinking on, `<think>...</think>` is a thinking block, whole and streamed
    (the tool checkpoint's words: each script token must be an added token, hence the quotes)."""
    folder = write_tool_checkpoint(tmp_path / "thinker", ["<think>", '"hmm"', "</think>", '"ok"'],
                                   template=THINKING_TEMPLATE)
    srv = start("--model", str(folder), "--served-model-name", "thinker", "--kv-cache-gb", "0.005")
    a = anthropic.Anthropic(base_url=srv.url, api_key="none", max_retries=0)
    kw = dict(model="thinker", max_tokens=20, messages=ASK, thinking={"type": "enabled", "budget_tokens": 1024})
    whole = a.messages.create(**kw)
    with a.messages.stream(**kw) as s:
        streamed = s.get_final_message()
    for m in (whole, streamed):
        assert [(b.type, (b.thinking if b.type == "thinking" else b.text).strip()) for b in m.content] == [
            ("thinking", '"hmm"'), ("text", '"ok"')]
    plain = a.messages.create(model="thinker", max_tokens=20, messages=ASK)  # thinking not asked: all text
    assert [b.type for b in plain.content] == ["text"] and "<think>" in plain.content[0].text


def test_reasoning_parser_gives_openai_chat_its_reasoning(start, tmp_path):
    """vLLM's `--reasoning-parser qwen3`: the reply's `<think>...</think>` is the message's `reasoning` (and
    `reasoning_content`), whole and streamed; without the flag it stays in the content."""
    folder = write_tool_checkpoint(tmp_path / "thinker", ["<think>", '"hmm"', "</think>", '"ok"'],
                                   template=THINKING_TEMPLATE)
    srv = start("--model", str(folder), "--served-model-name", "thinker", "--kv-cache-gb", "0.005",
                "--reasoning-parser", "qwen3")
    o = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
    kw = dict(model="thinker", max_tokens=20, messages=ASK)
    m = o.chat.completions.create(**kw).choices[0].message
    assert (m.model_extra["reasoning"].strip(), m.model_extra["reasoning_content"].strip(), m.content.strip()) == (
        '"hmm"', '"hmm"', '"ok"')
    deltas = [c.choices[0].delta for c in o.chat.completions.create(stream=True, **kw) if c.choices]
    assert "".join((d.model_extra or {}).get("reasoning") or "" for d in deltas).strip() == '"hmm"'
    assert "".join(d.content or "" for d in deltas).strip() == '"ok"'
    plain = start("--model", str(folder), "--served-model-name", "thinker", "--kv-cache-gb", "0.005")
    said = openai.OpenAI(base_url=plain.url + "/v1", api_key="none", max_retries=0).chat.completions.create(**kw)
    assert "<think>" in said.choices[0].message.content and "reasoning" not in said.choices[0].message.model_extra

    # the Responses API: a `reasoning` item before the message, whole and streamed; sent back, it is taken
    r = o.responses.create(model="thinker", input="hello", max_output_tokens=20)
    assert [i.type for i in r.output] == ["reasoning", "message"] and r.output_text.strip() == '"ok"'
    assert r.output[0].content[0].text.strip() == '"hmm"' and 0 < r.usage.output_tokens_details.reasoning_tokens < 20
    with o.responses.stream(model="thinker", input="hello", max_output_tokens=20) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert "response.reasoning_text.delta" in kinds and "response.reasoning_text.done" in kinds
    assert [i.type for i in final.output] == ["reasoning", "message"] and final.output_text == r.output_text
    again = o.responses.create(model="thinker", max_output_tokens=20, store=False, input=[
        {"role": "user", "content": "hello"}, *[i.model_dump(exclude_none=True) for i in r.output],
        {"role": "user", "content": "more"}])
    assert again.output_text.strip() == '"ok"'


def test_a_reasoning_item_goes_with_the_assistant_turn_after_it():
    from agentkv.server.api_responses import _messages
    from agentkv.server.responses_protocol import ResponsesRequest

    body = ResponsesRequest.model_validate({"model": "m", "input": [
        {"role": "user", "content": "hi"},
        {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "hmm"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "ok"}]})
    msgs = _messages(body.input)
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool"]
    assert msgs[1]["reasoning_content"] == "hmm" and msgs[1]["tool_calls"][0]["function"]["name"] == "f"


def test_thinking_splits_alike_in_any_pieces():
    for text in ["<think>a</think>b", "  <think>\nlong thought</think>\n\nanswer", "no thinking", "<thi", "<think>cut"]:
        splitter = ThinkingSplitter()
        got = [splitter.feed(c, i == len(text) - 1) for i, c in enumerate(text)]
        assert ("".join(g[0] for g in got), "".join(g[1] for g in got)) == _whole(text)
    assert _whole("<think>a</think>b") == ("a", "b") and _whole("<thi") == ("", "<thi") and _whole("x") == ("", "x")


def _whole(text: str) -> tuple[str, str]:
    return ThinkingSplitter().feed(text, finished=True)


def test_thinking_refused_by_a_template_without_one(server):
    a = anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as e:
        a.messages.create(model="tiny", max_tokens=5, messages=ASK, thinking={"type": "adaptive"})
    assert "thinking" in e.value.message and "no thinking mode" in e.value.message
    ok = a.messages.create(model="tiny", max_tokens=5, messages=ASK, thinking={"type": "disabled"})
    assert ok.stop_reason in ("end_turn", "max_tokens")


def test_claude_code_request_fields(chat_anth):
    """What Claude Code 2.1 sends beyond the basics: system messages between turns, context_management,
    output_config, cache_control."""
    m = chat_anth.messages.create(model="chat", max_tokens=10, messages=[
        {"role": "user", "content": [{"type": "text", "text": "hello", "cache_control": {"type": "ephemeral"}}]},
        {"role": "system", "content": "Available agent types: none"}],
        extra_body={"context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
                    "output_config": {"effort": "high"}})
    assert m.content[0].text == CHAT_REPLY


def _prompt(m) -> int:
    u = m.usage
    return u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens


def test_chat_template_kwargs_reach_the_template(chat_oai, chat_server):
    """vLLM's `chat_template_kwargs`: Qwen3's `enable_thinking` switch from an OpenAI client, on chats and on
    /tokenize alike; the variables the server sets itself are refused by name."""
    ask = [{"role": "user", "content": "hello"}]
    off = chat_oai.chat.completions.create(model="chat", max_tokens=3, messages=ask,
                                           extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    plain = chat_oai.chat.completions.create(model="chat", max_tokens=3, messages=ask)
    assert off.usage.prompt_tokens > plain.usage.prompt_tokens  # the template closed an empty think block
    counted = httpx.post(chat_server.url + "/tokenize", json={"model": "chat", "messages": ask,
                                                               "chat_template_kwargs": {"enable_thinking": False}})
    assert counted.json()["count"] == off.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError) as e:
        chat_oai.chat.completions.create(model="chat", max_tokens=3, messages=ask,
                                         extra_body={"chat_template_kwargs": {"tools": [], "bos_token": "x"}})
    assert "chat_template_kwargs" in e.value.message and "bos_token, tools" in e.value.message
