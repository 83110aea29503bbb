"""The OpenAI API over a real server, driven by the official `openai` client, streaming and not."""

from __future__ import annotations

import threading

import openai
import pytest

from tests.engine.conftest import WORDS

SYSTEM = "the agent reads a file and calls a tool then writes code " * 6  # several full blocks


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)


def chat(client, user: str, **kw):
    return client.chat.completions.create(model="tiny", messages=[{"role": "system", "content": SYSTEM},
                                                                  {"role": "user", "content": user}], **kw)


def test_models(client, server):
    cards = client.models.list().data
    assert [c.id for c in cards] == ["tiny"]
    assert cards[0].model_extra["max_model_len"] == 4096


def test_chat_reports_cached_tokens_on_a_repeated_prefix(client):
    first = chat(client, "fix bug", max_tokens=8, temperature=0)
    again = chat(client, "hello world", max_tokens=8, temperature=0)
    u1, u2 = first.usage, again.usage
    assert u1.prompt_tokens > 64 and u1.prompt_tokens_details.cached_tokens == 0
    assert u2.prompt_tokens_details.cached_tokens >= 64  # the shared system prompt, in whole blocks
    assert u2.prompt_tokens_details.cached_tokens % 16 == 0 and u2.prompt_tokens_details.cached_tokens < u2.prompt_tokens
    tiers = u2.prompt_tokens_details.model_extra["cached_tokens_per_tier"]
    assert sum(tiers.values()) == u2.prompt_tokens_details.cached_tokens and "gpu" in tiers
    assert u2.total_tokens == u2.prompt_tokens + u2.completion_tokens
    assert first.choices[0].finish_reason in ("stop", "length") and first.id.startswith("chatcmpl-")


def test_chat_stream_matches_the_whole_reply(client):
    whole = chat(client, "python rust go", max_tokens=12, temperature=0, seed=1)
    chunks = list(chat(client, "python rust go", max_tokens=12, temperature=0, seed=1, stream=True,
                       stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens_details.cached_tokens > 0  # the same prompt again


def test_max_tokens_and_length_finish(client):
    r = chat(client, "yes no", max_completion_tokens=3, temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 3 and r.choices[0].finish_reason == "length"


def test_seeded_sampling_is_reproducible(client):
    a, b = (chat(client, "go go go", max_tokens=10, temperature=1.0, top_p=0.9, seed=7) for _ in range(2))
    assert a.choices[0].message.content == b.choices[0].message.content


def test_completions_text_and_token_ids(client, server):
    r = client.completions.create(model="tiny", prompt="the agent reads a file", max_tokens=5, temperature=0,
                                  extra_body={"ignore_eos": True})
    assert r.usage.prompt_tokens == 6 and r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
    ids = client.completions.create(model="tiny", prompt=server.app.state.server.tokenizer.encode("the agent reads a file"), max_tokens=5, temperature=0,
                                    extra_body={"ignore_eos": True})
    assert ids.choices[0].text == r.choices[0].text  # the same tokens, given as ids
    streamed = client.completions.create(model="tiny", prompt="the agent reads a file", max_tokens=5, temperature=0,
                                         stream=True, extra_body={"ignore_eos": True})
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text


def test_return_token_ids_as_vllm_gives_them(client, server):
    """vLLM's extension: the prompt's ids as the engine saw them and the reply's, whole or chunk by chunk."""
    tok = server.app.state.server.tokenizer
    kw = dict(model="tiny", prompt="the agent reads a file", max_tokens=6, temperature=0,
              extra_body={"ignore_eos": True, "return_token_ids": True})
    whole = client.completions.create(**kw).choices[0]
    assert whole.prompt_token_ids == tok.encode("the agent reads a file") and len(whole.token_ids) == 6
    assert tok.decode(whole.token_ids) == whole.text
    chunks = [c.choices[0] for c in client.completions.create(stream=True, **kw)]
    assert chunks[0].prompt_token_ids == whole.prompt_token_ids
    assert all(getattr(c, "prompt_token_ids", None) is None for c in chunks[1:])
    assert [t for c in chunks for t in c.token_ids] == whole.token_ids
    plain = client.completions.create(**{**kw, "extra_body": {"ignore_eos": True}}).choices[0]
    assert "token_ids" not in plain.model_dump() and plain.text == whole.text  # only when asked

    said = chat(client, "fix bug", max_tokens=5, temperature=0, extra_body={"ignore_eos": True, "return_token_ids": True})
    ids = said.model_extra["prompt_token_ids"]
    assert len(ids) == said.usage.prompt_tokens and tok.decode(ids).endswith("code fix bug")  # template's specials skipped
    assert len(said.choices[0].token_ids) == said.usage.completion_tokens == 5
    streamed = list(chat(client, "fix bug", max_tokens=5, temperature=0, stream=True,
                         extra_body={"ignore_eos": True, "return_token_ids": True}))
    assert streamed[0].model_extra["prompt_token_ids"] == said.model_extra["prompt_token_ids"]
    assert [t for c in streamed if c.choices for t in c.choices[0].token_ids] == said.choices[0].token_ids


def test_stop_string_ends_the_reply(client):
    base = client.completions.create(model="tiny", prompt="hello world", max_tokens=12, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = next(w for w in base.split() if base.find(w) > 0)  # (a stop at offset 0 is not cut: engine bug)
    r = client.completions.create(model="tiny", prompt="hello world", max_tokens=12, temperature=0, stop=[stop],
                                  extra_body={"ignore_eos": True})
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == base[: base.find(stop)]


def test_threads_share_one_engine_safely(client):
    """Sync clients on threads at once (what agents' tool runners do): every one gets its own full reply."""
    out: dict[int, str] = {}

    def run(i: int) -> None:
        out[i] = client.completions.create(model="tiny", prompt=f"hello {WORDS[i]} world", max_tokens=8, temperature=0,
                                           extra_body={"ignore_eos": True}).choices[0].text

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alone = client.completions.create(model="tiny", prompt=f"hello {WORDS[3]} world", max_tokens=8, temperature=0,
                                      extra_body={"ignore_eos": True}).choices[0].text
    assert len(out) == 8 and out[3] == alone  # batching did not change a greedy reply


def test_cached_tokens_per_tier_with_a_dram_tier(start, plain_dir):
    """A GPU pool of ~50 blocks with a host tier below: a prompt pushed out of the GPU by others is found in
    DRAM, and usage says so."""
    srv = start("--model", str(plain_dir), "--served-model-name", "tiny", "--kv-cache-gb", "0.0004",
                "--kv-tiers", "dram=0.01GiB")
    c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)

    def tiers(words: list[str]) -> dict[str, int]:
        r = c.completions.create(model="tiny", prompt=" ".join(words * 100), max_tokens=1, temperature=0)
        return r.usage.prompt_tokens_details.model_extra["cached_tokens_per_tier"]

    assert sum(tiers(WORDS[:4]).values()) == 0
    for i in range(4, 16, 4):
        tiers(WORDS[i : i + 4])  # others fill the GPU tier
    found = tiers(WORDS[:4])
    assert found["dram"] >= 160 and found["dram"] + found.get("gpu", 0) >= 384


def test_tokenize_and_detokenize_as_vllm(client, server):
    import httpx

    tok = server.app.state.server.tokenizer
    with httpx.Client(base_url=server.url) as h:
        r = h.post("/tokenize", json={"model": "tiny", "prompt": "fix the bug", "return_token_strs": True}).json()
        assert r["tokens"] == tok.encode("fix the bug") and r["count"] == 4 and r["max_model_len"] == 4096
        assert r["token_strs"] == ["<|begin_of_text|>", "fix", "the", "bug"]
        bare = h.post("/tokenize", json={"prompt": "fix the bug", "add_special_tokens": False}).json()
        assert bare["tokens"] == r["tokens"][1:] and bare["token_strs"] is None
        said = chat(client, "fix bug", max_tokens=1, temperature=0)
        as_chat = h.post("/tokenize", json={"model": "tiny", "messages": [{"role": "system", "content": SYSTEM},
                                                                           {"role": "user", "content": "fix bug"}]})
        assert as_chat.json()["count"] == said.usage.prompt_tokens  # what a chat request is charged
        assert h.post("/detokenize", json={"model": "tiny", "tokens": r["tokens"]}).json() == {"prompt": "fix the bug"}
        for path, body, field in [("/tokenize", {"model": "tiny"}, "prompt"),
                                  ("/tokenize", {"model": "nope", "prompt": "x"}, "model"),
                                  ("/detokenize", {"tokens": [10**6]}, "tokens"),
                                  ("/tokenize", {"prompt": "x", "token_strs": True}, "token_strs"),  # vLLM's
                                  ("/detokenize", {"tokens": [1], "skip": 1}, "skip")]:  # flag: return_token_strs
            bad = h.post(path, json=body)
            assert bad.status_code in (400, 404, 422) and field in bad.text, (path, bad.text)
        unknown = h.post("/tokenize", json={"prompt": "x", "token_strs": True})
        assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "token_strs", unknown.text
