"""Every error path: malformed bodies and fields, unknown model, context over the limit, unsupported options,
a full queue (429 with Retry-After), a client that disconnects (its request aborted), unknown routes."""

from __future__ import annotations

import threading
import time

import anthropic
import httpx
import openai
import pytest

MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


def test_malformed_json_and_fields_are_400_naming_the_field(server):
    e = error(httpx.post(server.url + "/v1/chat/completions", content=b"{not json",
                         headers={"content-type": "application/json"}), 400)
    assert e["code"] == "invalid_json" and e["message"].startswith("malformed JSON body")
    e = error(httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "robot"}]}), 400)
    assert e["param"] == "messages.0.role" and e["type"] == "invalid_request_error"
    e = error(httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny"}), 400)
    assert e["param"] == "messages" and "Field required" in e["message"]
    e = error(httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 0}), 400)
    assert e["param"] == "max_tokens"
    e = error(httpx.post(server.url + "/v1/completions", json=[1, 2]), 400)
    assert e["message"].startswith("request body")


def test_unsupported_options_are_refused_not_ignored(oai):
    with pytest.raises(openai.BadRequestError, match="n: Input should be less than or equal to 1"):
        oai.chat.completions.create(model="tiny", messages=MSG, n=2)
    with pytest.raises(openai.BadRequestError, match="tool_choice: structured outputs: the grammar engine cannot read"):
        oai.chat.completions.create(model="tiny", messages=MSG, tool_choice="required",  # a word-level tokenizer
                                    tools=[{"type": "function", "function": {"name": "f"}}])
    with pytest.raises(openai.BadRequestError, match="presence_penalty"):
        oai.chat.completions.create(model="tiny", messages=MSG, presence_penalty=0.5)
    with pytest.raises(openai.BadRequestError, match=r"prompt: token ids must be in \[0, 128\)"):
        oai.completions.create(model="tiny", prompt=[1, 2, 999])


def test_unknown_model_is_404(oai, server):
    with pytest.raises(openai.NotFoundError, match="model 'gpt-4o' does not exist") as e:
        oai.chat.completions.create(model="gpt-4o", messages=MSG)
    assert e.value.body["code"] == "model_not_found"
    a = anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)
    with pytest.raises(anthropic.NotFoundError) as e:
        a.messages.create(model="claude", max_tokens=4, messages=MSG)
    assert e.value.body == {"type": "error", "error": {"type": "not_found_error",
                                                      "message": "model 'claude' does not exist: this server serves 'tiny'"}}


def test_context_over_the_limit_is_400_naming_it(oai, server):
    with pytest.raises(openai.BadRequestError, match="maximum context length is 4096 tokens") as e:
        oai.completions.create(model="tiny", prompt="the agent " * 2100, max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError, match="the prompt has 9 tokens and max_tokens asks for 4100 more") as e:
        oai.chat.completions.create(model="tiny", messages=MSG, max_tokens=4100)
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError, match="maximum context length is 4096 tokens") as e:
        oai.responses.create(model="tiny", input="go", max_output_tokens=4100)
    assert (e.value.body["param"], e.value.body["code"]) == ("input", "context_length_exceeded")  # its own field
    a = anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)
    with pytest.raises(anthropic.BadRequestError, match="maximum context length is 4096"):
        a.messages.create(model="tiny", max_tokens=4090, messages=[{"role": "user", "content": "go " * 10}])


def test_empty_prompt_is_400(oai):
    with pytest.raises(openai.BadRequestError, match="prompt is empty"):
        oai.completions.create(model="tiny", prompt="")


def test_unknown_route_is_a_json_404(server):
    e = error(httpx.get(server.url + "/v1/nothing"), 404)
    assert e["message"] == "Not Found"
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}


def metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_client_disconnect_aborts_and_frees_the_request(server):
    aborted = metric(server, 'agentkv_requests_total{endpoint="completions",finish_reason="abort"}')
    with httpx.stream("POST", server.url + "/v1/completions", json={
            "model": "tiny", "prompt": "the agent", "max_tokens": 3000, "ignore_eos": True, "stream": True}) as r:
        next(r.iter_lines())  # the first event: the request is running ...
    t0 = time.monotonic()  # ... and the client hangs up
    while metric(server, 'agentkv_requests_total{endpoint="completions",finish_reason="abort"}') == aborted:
        assert time.monotonic() - t0 < 20, "the request was not aborted"
        time.sleep(0.05)
    assert metric(server, "agentkv_requests_in_flight") == 0
    assert metric(server, "agentkv_num_requests_running") == 0


def test_full_queue_is_429_with_retry_after(start, plain_dir):
    srv = start("--model", str(plain_dir), "--served-model-name", "tiny", "--kv-cache-gb", "0.01",
                "--max-num-seqs", "1", "--max-queue", "1")
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
    long = dict(model="tiny", prompt="the agent", max_tokens=400, extra_body={"ignore_eos": True})
    threads = [threading.Thread(target=c.completions.create, kwargs=long) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while srv.app.state.server.jobs.in_flight < 2:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(openai.RateLimitError, match=r"server busy: 2 requests in flight \(limit 2\)") as e:
        c.completions.create(**long)
    assert int(e.value.response.headers["retry-after"]) >= 1
    a = anthropic.Anthropic(base_url=srv.url, api_key="none", max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as e:
        a.messages.create(model="tiny", max_tokens=4, messages=MSG)
    assert e.value.body["error"]["type"] == "rate_limit_error"
    for t in threads:
        t.join()
    assert metric(srv, 'agentkv_requests_rejected_total{reason="queue_full"}') == 2
    assert c.completions.create(model="tiny", prompt="hello", max_tokens=2).choices  # room again
