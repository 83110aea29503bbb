"""What each API's official client expects of the server beyond completions: served names and aliases
(unknown: 404 listing them), `models.list` / `models.retrieve` in OpenAI's and in Anthropic's shape,
`request-id` / `x-request-id` on every response, and Anthropic `thinking` honoured by a template with a
thinking mode or refused, named, by one without."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from tests.engine.conftest import CHAT_REPLY

ASK = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def oai(chat_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=chat_server.url + "/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="module")
def anth(chat_server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=chat_server.url, api_key="none", max_retries=0)


def test_models_in_each_shape(oai, anth):
    cards = oai.models.list().data
    assert [(m.id, m.object, m.model_extra["root"]) for m in cards] == [("chat", "model", "chat"),
                                                                         ("chat-small", "model", "chat")]
    infos = anth.models.list().data
    assert [(m.id, m.type, m.display_name) for m in infos] == [("chat", "model", "chat"),
                                                               ("chat-small", "model", "chat-small")]
    assert infos[0].created_at.year >= 2026
    assert anth.models.retrieve("chat-small").id == "chat-small" and oai.models.retrieve("chat").id == "chat"
    with pytest.raises(anthropic.NotFoundError):
        anth.models.retrieve("claude-opus-4-1")


def test_aliases_answer_and_unknown_names_list_what_is_served(oai, anth):
    r = oai.chat.completions.create(model="chat-small", messages=ASK, max_tokens=10, temperature=0)
    assert r.model == "chat-small" and r.choices[0].message.content == CHAT_REPLY
    m = anth.messages.create(model="chat-small", max_tokens=10, messages=ASK)
    assert m.model == "chat-small"
    with pytest.raises(openai.NotFoundError) as e:
        oai.chat.completions.create(model="gpt-4o", messages=ASK, max_tokens=5)
    assert "'chat', 'chat-small'" in e.value.body["message"] and e.value.body["code"] == "model_not_found"
    with pytest.raises(anthropic.NotFoundError) as e:
        anth.messages.create(model="claude-sonnet-4-5", max_tokens=5, messages=ASK)
    assert "'chat', 'chat-small'" in e.value.message


def test_request_ids(chat_server, oai, anth):
    raw = oai.chat.completions.with_raw_response.create(model="chat", messages=ASK, max_tokens=5)
    assert raw.headers["x-request-id"].startswith("req_") and raw.headers["request-id"] == raw.headers["x-request-id"]
    m = anth.messages.with_raw_response.create(model="chat", max_tokens=5, messages=ASK)
    assert m.request_id and m.request_id.startswith("req_")
    with pytest.raises(anthropic.NotFoundError) as e:  # errors carry one too
        anth.messages.create(model="nope", max_tokens=5, messages=ASK)
    assert e.value.request_id
    given = httpx.get(chat_server.url + "/v1/models", headers={"x-request-id": "trace-42"})
    assert given.headers["x-request-id"] == given.headers["request-id"] == "trace-42"


def test_thinking_goes_to_a_template_with_a_thinking_mode(anth):
    on = anth.messages.create(model="chat", max_tokens=10, messages=ASK, thinking={"type": "enabled",
                                                                                   "budget_tokens": 1024})
    off = anth.messages.create(model="chat", max_tokens=10, messages=ASK, thinking={"type": "disabled"})
    plain = anth.messages.create(model="chat", max_tokens=10, messages=ASK)
    assert _prompt(on) == _prompt(plain)
    assert _prompt(off) > _prompt(on)  # the template closed an empty think block for the model
    assert on.content[0].text == CHAT_REPLY


def test_thinking_refused_by_a_template_without_one(server):
    a = anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as e:
        a.messages.create(model="tiny", max_tokens=5, messages=ASK, thinking={"type": "adaptive"})
    assert "thinking" in e.value.message and "no thinking mode" in e.value.message
    ok = a.messages.create(model="tiny", max_tokens=5, messages=ASK, thinking={"type": "disabled"})
    assert ok.stop_reason in ("end_turn", "max_tokens")


def test_claude_code_request_fields(anth):
    """What Claude Code 2.1 sends beyond the basics: system messages between turns, context_management,
    output_config, cache_control."""
    m = anth.messages.create(model="chat", max_tokens=10, messages=[
        {"role": "user", "content": [{"type": "text", "text": "hello", "cache_control": {"type": "ephemeral"}}]},
        {"role": "system", "content": "Available agent types: none"}],
        extra_body={"context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
                    "output_config": {"effort": "high"}})
    assert m.content[0].text == CHAT_REPLY


def _prompt(m) -> int:
    u = m.usage
    return u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens
