"""The Ray gateway routes every API on the prompt a replica will run (the replica's own `to_request`):
Codex's /v1/responses, its session in `prompt_cache_key`, goes where its prefix is cached."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.test_ray_serve import Gateway, _words
from tests.engine.conftest import write_checkpoint


@pytest.fixture(scope="module")
def gateway(ray_cluster, tmp_path_factory) -> Iterator[Gateway]:
    model = write_checkpoint(tmp_path_factory.mktemp("plain"), "llama3", seed=3)
    gw = Gateway(["--model", str(model), "--served-model-name", "tiny", "--kv-cache-gb", "0.01",
                  "--max-num-seqs", "8", "--block-size", "16", "--replicas", "2"])
    yield gw
    gw.stop()


def test_the_gateway_answers_responses_and_routes_them_on_their_prefix_and_session(gateway):
    from openai import OpenAI

    client = OpenAI(base_url=gateway.url + "/v1", api_key="none", timeout=60, max_retries=0)

    def ask(key: str, words: list[str]):
        raw = client.responses.with_raw_response.create(model="tiny", input=" ".join(words), prompt_cache_key=key,
                                                        max_output_tokens=4, temperature=0)
        return raw.headers["x-agentkv-replica"], raw.parse()

    text = _words("codex", 200)
    home, first = ask("codex-1", text[:120])
    assert first.status in ("completed", "incomplete") and first.usage.input_tokens > 120
    again, follow = ask("codex-1", text[:160])  # the session's next turn stays home
    assert again == home and follow.usage.input_tokens_details.cached_tokens >= 112
    fork, forked = ask("codex-2", text[:140])  # a new session on the same prefix: where that prefix is cached
    assert fork == home and forked.usage.input_tokens_details.cached_tokens >= 112
    other, _ = ask("codex-3", _words("elsewhere", 120))  # a new session on its own text: the idle replica
    assert other != home
