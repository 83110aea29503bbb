"""Tenants: API keys, a prefix cache split by tenant and cache_salt, and an operator's public prefix."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

PUBLIC = "you are the agent : read a file , call a tool , then write code and tests until the tests pass " * 3
SECRET = "the rust bug is in the go file and python tests fail again " * 4


@pytest.fixture(scope="module")
def tenant_server(start, plain_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tenants")
    (folder / "keys").write_text("# key tenant\nsk-acme acme\nsk-globex globex\n")
    (folder / "public.txt").write_text(PUBLIC)
    return start("--model", str(plain_dir), "--served-model-name", "tiny", "--kv-cache-gb", "0.01",
                 "--api-keys", str(folder / "keys"), "--public-prefix", str(folder / "public.txt"))


def client(server, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def cached(c: openai.OpenAI, system: str, user: str, **kw) -> int:
    r = c.chat.completions.create(model="tiny", max_tokens=2, temperature=0, messages=[
        {"role": "system", "content": system}, {"role": "user", "content": user}], **kw)
    return r.usage.prompt_tokens_details.cached_tokens


def test_keys_are_required(tenant_server):
    with pytest.raises(openai.AuthenticationError, match="missing or unknown API key"):
        client(tenant_server, "sk-wrong").models.list()
    a = anthropic.Anthropic(base_url=tenant_server.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as e:
        a.messages.create(model="tiny", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert e.value.body["error"]["type"] == "authentication_error"
    assert [m.id for m in client(tenant_server, "sk-acme").models.list().data] == ["tiny"]
    bad = httpx.post(tenant_server.url + "/v1/chat/completions", content=b"{oops",
                     headers={"content-type": "application/json"})
    assert bad.status_code == 401  # the key is checked first: no 400 describing the body to a stranger
    for path in ("/tokenize", "/detokenize"):  # vLLM's tokenizer endpoints: a tenant's key opens them too
        body = {"prompt": "hi"} if path == "/tokenize" else {"tokens": [1]}
        assert httpx.post(tenant_server.url + path, json=body).status_code == 401
        assert httpx.post(tenant_server.url + path, json=body,
                          headers={"authorization": "Bearer sk-acme"}).status_code == 200


def test_no_tenant_hits_another_tenants_prefix(tenant_server):
    acme, globex = client(tenant_server, "sk-acme"), client(tenant_server, "sk-globex")
    assert cached(acme, SECRET, "fix bug") == 0
    assert cached(acme, SECRET, "fix bug") >= 48  # acme's own prefix is cached ...
    assert cached(globex, SECRET, "fix bug") == 0  # ... and invisible to globex
    assert cached(acme, SECRET, "fix bug", extra_body={"cache_salt": "s1"}) == 0  # a salt is a namespace too
    assert cached(acme, SECRET, "fix bug", extra_body={"cache_salt": "s1"}) >= 48


def test_a_public_prefix_is_shared_and_nothing_after_it(tenant_server):
    acme, globex = client(tenant_server, "sk-acme"), client(tenant_server, "sk-globex")
    tok = tenant_server.app.state.server.tokenizer
    public_blocks = tenant_server.app.state.server.cfg.public.public_tokens(
        tok.encode_chat([{"role": "system", "content": PUBLIC}, {"role": "user", "content": "x"}])) // 16
    assert public_blocks >= 3
    assert cached(acme, PUBLIC, "the agent reads a file " * 8) == 0
    assert cached(globex, PUBLIC, "python rust go " * 8) == public_blocks * 16  # the operator's text only
    assert cached(globex, PUBLIC, "the agent reads a file " * 8) == public_blocks * 16  # not acme's message
    assert cached(globex, PUBLIC, "the agent reads a file " * 8) > public_blocks * 16  # globex's own, now
    assert cached(globex, PUBLIC, "hello", extra_body={"cache_salt": "private"}) == 0  # a salt opts out
