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
