"""The Anthropic Messages API over a real server, driven by the official `anthropic` client."""

from __future__ import annotations

import anthropic
import pytest

GREEDY = {"temperature": 0}  # this client version has no sampling arguments; the API still takes them
SYSTEM = "you write rust and go code then the tests pass or fail and you fix the bug " * 5


@pytest.fixture(scope="module")
def client(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)


def ask(client, user: str, **kw):
    return client.messages.create(model="tiny", max_tokens=kw.pop("max_tokens", 8), system=SYSTEM,
                                  messages=[{"role": "user", "content": user}], extra_body=GREEDY, **kw)


def test_cache_read_and_creation_tokens(client, server):
    first = ask(client, "hello world")
    u = first.usage
    assert u.cache_read_input_tokens == 0 and u.cache_creation_input_tokens >= 64
    prompt = u.input_tokens + u.cache_creation_input_tokens
    assert u.cache_creation_input_tokens == prompt // 16 * 16 and u.input_tokens < 16  # the partial last block
    again = ask(client, "fix bug")  # the same system prompt
    assert again.usage.cache_read_input_tokens >= 64
    assert again.usage.cache_read_input_tokens % 16 == 0
    total = again.usage.input_tokens + again.usage.cache_read_input_tokens + again.usage.cache_creation_input_tokens
    assert total == len(server.app.state.server.tokenizer.encode_chat(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "fix bug"}]))
    assert first.id.startswith("msg_") and first.role == "assistant" and first.type == "message"
    assert first.stop_reason in ("end_turn", "max_tokens")


def test_stream_events_match_the_whole_message(client):
    whole = ask(client, "python rust go", max_tokens=10)
    with client.messages.stream(model="tiny", max_tokens=10, system=SYSTEM, extra_body=GREEDY,
                                messages=[{"role": "user", "content": "python rust go"}]) as stream:
        events = [e.type for e in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start" and events[-1] == "message_stop"
    assert "content_block_start" in events and "message_delta" in events
    assert final.content[0].text == whole.content[0].text and final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.usage.cache_read_input_tokens > 0  # reported in message_start


def test_max_tokens_and_stop_sequences(client):
    r = ask(client, "yes no", max_tokens=3)
    text = ask(client, "yes no", max_tokens=12).content[0].text
    stop = next(w for w in text.split() if text.find(w) > 0)
    s = ask(client, "yes no", max_tokens=12, stop_sequences=[stop])
    assert s.stop_reason == "stop_sequence" and s.stop_sequence == stop
    assert s.content[0].text == text[: text.find(stop)]
    assert r.usage.output_tokens <= 3
    with client.messages.stream(model="tiny", max_tokens=12, system=SYSTEM, extra_body=GREEDY, stop_sequences=[stop],
                                messages=[{"role": "user", "content": "yes no"}]) as stream:
        pieces = [e.delta.text for e in stream if e.type == "content_block_delta"]
        streamed = stream.get_final_message()
    assert streamed.stop_reason == "stop_sequence" and streamed.stop_sequence == stop  # the engine's match
    assert "".join(pieces) == s.content[0].text  # no piece showed any part of the stop string


def test_count_tokens(client):
    n = client.messages.count_tokens(model="tiny", system=SYSTEM, messages=[{"role": "user", "content": "hi"}])
    r = ask(client, "hi")
    assert n.input_tokens == r.usage.input_tokens + r.usage.cache_read_input_tokens + r.usage.cache_creation_input_tokens
