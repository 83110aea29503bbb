"""The Ray gateway renders a request with the replica's own `to_request` (server/apis.py): the prompt it
routes on is, token for token, the one the server runs, for every API and the fields that shape a prompt
(`chat_template_kwargs`, Anthropic `thinking`, Responses `instructions`)."""

from __future__ import annotations

import json

import httpx

from agentkv.engine.tokenizer import Tokenizer
from agentkv.server.apis import ask_of
from agentkv.server.pipeline import Context, encode


def _gateway_prompt(chat_dir, path: str, body: dict, headers: dict | None = None) -> tuple[list[int], str | None]:
    ask = ask_of(path, json.dumps(body).encode(), headers or {}, Context(Tokenizer(str(chat_dir))))
    return encode(ask, Tokenizer(str(chat_dir))), ask.session


def test_chat_with_template_kwargs_routes_on_the_prompt_the_server_runs(chat_server, chat_dir):
    body = {"model": "chat", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 2,
            "chat_template_kwargs": {"enable_thinking": False}, "return_token_ids": True, "user": "u1"}
    ids, session = _gateway_prompt(chat_dir, "/v1/chat/completions", body, {"x-session-id": "s9"})
    ran = httpx.post(chat_server.url + "/v1/chat/completions", json=body, timeout=60).json()
    assert ids == ran["prompt_token_ids"] and session == "s9"
    plain, _ = _gateway_prompt(chat_dir, "/v1/chat/completions", {**body, "chat_template_kwargs": None})
    assert plain != ids  # the template's switch changes the prompt: the gateway must not drop it


def test_anthropic_thinking_and_responses_route_on_the_prompt_the_server_runs(chat_server, chat_dir):
    msg = {"model": "chat", "max_tokens": 2, "messages": [{"role": "user", "content": "hello there"}],
           "thinking": {"type": "disabled"}, "metadata": {"user_id": "u2"}}
    ids, session = _gateway_prompt(chat_dir, "/v1/messages", msg)
    usage = httpx.post(chat_server.url + "/v1/messages", json=msg, timeout=60).json()["usage"]
    assert len(ids) == usage["input_tokens"] + usage["cache_read_input_tokens"] + usage["cache_creation_input_tokens"]
    assert session == "u2" and ids != _gateway_prompt(chat_dir, "/v1/messages", {**msg, "thinking": None})[0]
    resp = {"model": "chat", "input": "hello there", "instructions": "Be brief.", "max_output_tokens": 2,
            "prompt_cache_key": "codex-7"}
    ids, session = _gateway_prompt(chat_dir, "/v1/responses", resp)
    ran = httpx.post(chat_server.url + "/v1/responses", json=resp, timeout=60).json()
    assert len(ids) == ran["usage"]["input_tokens"] and session == "codex-7"
