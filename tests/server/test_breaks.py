"""The breaks issue 32's break test found, each sent as it was and answered with its 4xx (or done), the next
request still served: `/v1/responses` bodies checked like every other body (lone surrogates, NaN, metadata
bounds), free-form JSON nested past any stack, tool-call arguments nested thousands deep, and template
kwargs that name the template's own functions."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.server.test_hostile import COMPLETION, ok

JSON = {"content-type": "application/json"}


def _post(url: str, body: str) -> httpx.Response:
    return httpx.post(url, content=body.encode(), headers=JSON, timeout=30)


def _nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


RESPONSES = '{"model": "chat", "max_output_tokens": 4, '


@pytest.mark.parametrize(("body", "param"), [
    (RESPONSES + '"input": "a \\ud800 b"}', "input"),
    (RESPONSES + '"input": "hi", "instructions": "\\udfff"}', "instructions"),
    (RESPONSES + '"input": "hi", "user": "\\ud800"}', "user"),
    (RESPONSES + '"input": "hi", "metadata": {"k": "\\ud800"}}', "metadata"),
    (RESPONSES + '"input": [{"role": "user", "content": [{"type": "input_text", "text": "\\ud800"}]}]}', "input"),
    (RESPONSES + '"input": "hi", "reasoning": {"effort": NaN}}', "reasoning"),
    (RESPONSES + '"input": "hi", "stream": true, "reasoning": {"effort": NaN}}', "reasoning"),
    (RESPONSES + '"input": "hi", "metadata": {"k": "' + "x" * 513 + '"}}', "metadata"),
    (RESPONSES + '"input": "hi", "metadata": {' + ", ".join(f'"k{i}": "v"' for i in range(17)) + "}}", "metadata"),
])
def test_responses_bodies_have_every_bodys_checks(chat_server, body, param):
    r = _post(chat_server.url + "/v1/responses", body)
    assert r.status_code == 400 and param in r.json()["error"]["message"], r.text
    assert _post(chat_server.url + "/v1/responses", RESPONSES + '"input": "hi"}').status_code == 200


DEEP = 480  # ~2.9 KB: what overflowed the stack counting a prompt's characters


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", '{"model": "chat", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}], '
                             '"tools": [{"type": "function", "function": {"name": "f", "parameters": '
                             + _nested(DEEP) + "}}]}"),
    ("/v1/messages", '{"model": "chat", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}], '
                     '"tools": [{"name": "f", "input_schema": ' + _nested(DEEP) + "}]}"),
    ("/v1/messages", '{"model": "chat", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}, '
                     '{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": '
                     + _nested(DEEP) + "}]}]}"),
    ("/v1/responses", RESPONSES + '"input": "x", "tools": [{"type": "function", "name": "f", "parameters": '
                      + _nested(DEEP) + "}]}"),
])
def test_json_nested_past_the_stack_is_400(chat_server, path, body):
    r = _post(chat_server.url + path, body)
    assert r.status_code == 400, r.text  # "nested deeper than 64", or what a union's first branch says
    ok_chat(chat_server.url)


def ok_chat(url: str) -> None:
    r = httpx.post(url + "/v1/chat/completions", json={"model": "chat", "max_tokens": 4,
                                                       "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("depth", [100, 5000])
def test_tool_call_arguments_nested_deep_are_400_naming_them(chat_server, depth):
    call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": _nested(depth)}}
    body = {"model": "chat", "max_tokens": 4, "messages": [{"role": "user", "content": "x"},
                                                          {"role": "assistant", "tool_calls": [call]}]}
    r = httpx.post(chat_server.url + "/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "messages.1.tool_calls.0.function.arguments", r.text
    ok_chat(chat_server.url)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/tokenize"])
@pytest.mark.parametrize("name", ["namespace", "strftime_now", "range", "raise_exception"])
def test_template_kwargs_naming_a_template_function_are_400(chat_server, path, name):
    body = {"model": "chat", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}],
            "chat_template_kwargs": {name: 5}}
    r = httpx.post(chat_server.url + path, json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"] == "chat_template_kwargs", r.text
    assert name in r.json()["error"]["message"]
    ok_chat(chat_server.url)


def test_a_body_nested_past_the_json_decoder_is_400(server):
    r = _post(server.url + "/v1/completions", '{"model": "tiny", "prompt": "hi", "x": ' + "[" * 100_000
              + "]" * 100_000 + "}")
    assert r.status_code == 400 and "parsing the body" in r.json()["error"]["message"], r.text
    ok(server.url)


def _pydantic_tool_schema() -> dict:
    """A tool's parameters as Pydantic writes them: nested models under `$defs`, referenced by `$ref`."""
    from pydantic import BaseModel, Field

    class Edit(BaseModel):
        path: str = Field(max_length=12)
        line: int = Field(ge=0, le=99)

    class Args(BaseModel):
        edits: list[Edit] = Field(min_length=1, max_length=2)

    schema = Args.model_json_schema()
    assert "$defs" in schema
    return schema


@pytest.mark.parametrize("api", ["chat", "messages", "responses"])
def test_a_forced_tool_whose_schema_uses_defs_is_called(chat_oai, chat_anth, api):
    import jsonschema

    schema = _pydantic_tool_schema()
    ask = [{"role": "user", "content": "edit"}]
    if api == "chat":
        tools = [{"type": "function", "function": {"name": "edit", "parameters": schema}}]
        r = chat_oai.chat.completions.create(model="chat", messages=ask, tools=tools, tool_choice="required",
                                             max_tokens=200, temperature=0, parallel_tool_calls=False)
        args = json.loads(r.choices[0].message.tool_calls[0].function.arguments)
    elif api == "messages":
        tools = [{"name": "edit", "description": "x", "input_schema": schema}]
        r = chat_anth.messages.create(model="chat", max_tokens=200, tools=tools, tool_choice={"type": "any"},
                                      messages=ask, extra_body={"temperature": 0})
        args = next(b.input for b in r.content if b.type == "tool_use")
    else:
        r = chat_oai.responses.create(model="chat", input="edit", tools=[{"type": "function", "name": "edit",
                                      "parameters": schema, "strict": True}], tool_choice="required",
                                      temperature=0, max_output_tokens=200, parallel_tool_calls=False)
        args = json.loads(next(o.arguments for o in r.output if o.type == "function_call"))
    jsonschema.validate(args, schema)


def _ids(url: str, **extra) -> list[int]:
    r = httpx.post(url + "/v1/completions", json={**COMPLETION, "temperature": 0, "max_tokens": 6,
                                                  "ignore_eos": True, "return_token_ids": True, **extra}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["token_ids"]


def test_logit_bias_is_applied_not_ignored(server):
    plain = _ids(server.url)
    assert _ids(server.url, logit_bias={"7": 100}) == [7] * 6  # +100 all but forces a token
    banned = _ids(server.url, logit_bias={str(plain[0]): -100})
    assert banned[0] != plain[0] and plain[0] not in banned  # -100 bans one


def test_logit_bias_on_a_sampled_chat(chat_server):
    r = httpx.post(chat_server.url + "/v1/chat/completions", timeout=30, json={
        "model": "chat", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"9": 100},
        "return_token_ids": True, "temperature": 0.7, "seed": 1, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["choices"][0]["token_ids"] == [9] * 3, r.text


@pytest.mark.parametrize(("extra", "param"), [({"logit_bias": {"7": 101}}, "logit_bias"),
                                              ({"logit_bias": {"99999999": 1}}, "logit_bias"),
                                              ({"logit_bias": {"x": 1}}, "logit_bias"),
                                              ({"best_of": 2}, "best_of")])
def test_what_is_not_done_is_refused(server, extra, param):
    r = httpx.post(server.url + "/v1/completions", json={**COMPLETION, **extra}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"].startswith(param), r.text
    assert httpx.post(server.url + "/v1/completions", json={**COMPLETION, "best_of": 1}).status_code == 200


def test_slow_bodies_are_cut_off_without_a_traceback_and_leave_room(spawn, plain_dir, tmp_path):
    import socket
    import time

    log = tmp_path / "serve.log"
    srv = spawn("--model", str(plain_dir), "--served-model-name", "tiny", "--kv-cache-gb", "0.01",
                "--body-timeout", "1", "--max-connections", "4", log=log)
    slow = []
    for _ in range(4):  # headers sent, then one body byte of 100
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: 100\r\n\r\n{")
        s.settimeout(5)
        slow.append(s)
    ok(srv.url)  # at the cap: the slowest body made room
    time.sleep(1.5)
    for s in slow:
        assert s.recv(4096) == b""  # closed, unanswered, by the body timeout (or to make room)
        s.close()
    ok(srv.url)
    assert "Traceback" not in log.read_text()


def test_counting_rendering_tokenizing_and_translating_run_off_the_event_loop(chat_server, monkeypatch):
    """What grows with a legal body (decoding and validating its JSON, translating 250k messages, counting
    their characters, rendering and tokenizing them, detokenizing millions of ids) runs on worker threads:
    the event loop's thread, which every stream's bytes go through, never does it."""
    import threading

    from agentkv.server import api_chat, bodies

    server = chat_server.app.state.server
    seen: dict[str, threading.Thread] = {}

    def spy(name, fn):
        def wrapped(*a, **kw):
            seen[name] = threading.current_thread()
            return fn(*a, **kw)
        return wrapped

    for name in ("encode", "encode_chat", "decode"):
        monkeypatch.setattr(server.tokenizer, name, spy(name, getattr(server.tokenizer, name)))
    monkeypatch.setattr(server.pipe, "check_chars", spy("check_chars", server.pipe.check_chars))
    monkeypatch.setattr(api_chat, "to_request", spy("to_request", api_chat.to_request))
    monkeypatch.setattr(bodies, "validate", spy("validate", bodies.validate))
    ok_chat(chat_server.url)
    r = httpx.post(chat_server.url + "/v1/completions", json={"model": "chat", "prompt": "hi", "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert httpx.post(chat_server.url + "/detokenize", json={"tokens": [1, 2, 3]}).status_code == 200
    assert set(seen) == {"encode", "encode_chat", "decode", "check_chars", "to_request", "validate"}
    assert chat_server.thread not in seen.values(), {k: t.name for k, t in seen.items()}
