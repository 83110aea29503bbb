"""The Responses API with the official client: text and function calls, whole and streamed; tool outputs as
input items; `previous_response_id` chains (their prefix cached) within the retention window; forced calls
and json_schema output through the grammar engine; usage with cached tokens; what is refused, named."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.engine.conftest import CHAT_REPLY
from tests.server.test_structured import PERSON, RUN

RUN_TOOL = {"type": "function", "name": "run", "description": "Run a command", "parameters": RUN, "strict": True}


@pytest.fixture(scope="module")
def client(chat_oai) -> openai.OpenAI:
    return chat_oai


def test_text_whole_and_streamed(client):
    r = client.responses.create(model="chat", input="say hi", instructions="Be brief.", temperature=0)
    assert r.status == "completed" and r.output_text == CHAT_REPLY and r.id.startswith("resp_")
    assert r.usage.input_tokens > 0 and r.usage.output_tokens == 4  # the reply's tokens (EOS is not text)
    events = list(client.responses.create(model="chat", input="say hi", instructions="Be brief.", temperature=0,
                                          stream=True))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == CHAT_REPLY
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response
    assert done.output_text == CHAT_REPLY and done.usage.input_tokens_details.cached_tokens > 0  # same prompt again


@pytest.mark.parametrize("stream", [False, True])
def test_forced_function_call_and_its_output(client, stream):
    kw = dict(model="chat", input="list the files", tools=[RUN_TOOL], tool_choice="required", temperature=0)
    if stream:
        events = list(client.responses.create(**kw, stream=True))
        assert "response.function_call_arguments.done" in [e.type for e in events]
        r = events[-1].response
    else:
        r = client.responses.create(**kw)
    (call,) = [o for o in r.output if o.type == "function_call"]
    assert call.name == "run" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), RUN)
    follow = client.responses.create(model="chat", previous_response_id=r.id, tools=[RUN_TOOL], temperature=0,
                                     input=[{"type": "function_call_output", "call_id": call.call_id, "output": "a.py"}])
    assert follow.output_text == CHAT_REPLY and follow.previous_response_id == r.id
    assert follow.usage.input_tokens > r.usage.input_tokens  # the chain: the first turn, its call, the output
    assert follow.usage.input_tokens_details.cached_tokens >= r.usage.input_tokens // 16 * 16 - 16


def test_history_as_items_equals_the_chain(client):
    """Sending the whole conversation as items renders the same prompt as chaining by id."""
    first = client.responses.create(model="chat", input="hello there", temperature=0)
    chained = client.responses.create(model="chat", input="and again", previous_response_id=first.id, temperature=0)
    items = [{"role": "user", "content": "hello there"},
             {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": CHAT_REPLY}]},
             {"role": "user", "content": [{"type": "input_text", "text": "and again"}]}]
    whole = client.responses.create(model="chat", input=items, temperature=0)
    assert whole.usage.input_tokens == chained.usage.input_tokens
    assert whole.usage.input_tokens_details.cached_tokens >= whole.usage.input_tokens // 16 * 16 - 16


def test_json_schema_output(client):
    for stream in (False, True):
        kw = dict(model="chat", input="a person", temperature=0,
                  text={"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}})
        r = list(client.responses.create(**kw, stream=True))[-1].response if stream else client.responses.create(**kw)
        jsonschema.validate(json.loads(r.output_text), PERSON)


def test_store_retrieve_and_not_stored(client):
    r = client.responses.create(model="chat", input="hi", temperature=0)
    assert client.responses.retrieve(r.id).output_text == CHAT_REPLY
    gone = client.responses.create(model="chat", input="hi", temperature=0, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(gone.id)
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="chat", input="hi", previous_response_id=gone.id)
    assert e.value.body["param"] == "previous_response_id"


def test_retention_window(chat_server, client):
    r = client.responses.create(model="chat", input="hi", temperature=0)
    responses = chat_server.app.state.server.responses.kept
    kept, responses.retention_s = responses.retention_s, 0.0
    try:
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model="chat", input="more", previous_response_id=r.id)
        assert "retention" in e.value.body["message"]
    finally:
        responses.retention_s = kept


def test_refused_with_the_field_named(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="chat", input="hi", tools=[{"type": "web_search"}])
    assert e.value.body["param"] == "tools.0.type" and "hosted tool" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="chat", input="hi", tools=[RUN_TOOL],
                                tool_choice={"type": "function", "name": "nope"})
    assert e.value.body["param"] == "tool_choice"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-5", input="hi")
