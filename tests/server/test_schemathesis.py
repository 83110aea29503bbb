"""Property-based requests generated from the server's own OpenAPI schema (schemathesis strategies driven by
hypothesis): whatever a client sends, valid or not, the answer is never a 5xx, and every error has a JSON
error body."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

OPERATIONS = [("GET", "/health"), ("GET", "/metrics"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
              ("POST", "/v1/completions"), ("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens"),
              ("GET", "/v1/models/{model_id}"), ("POST", "/v1/responses"), ("GET", "/v1/responses/{response_id}"),
              ("POST", "/tokenize"), ("POST", "/detokenize")]


@pytest.fixture(scope="module")
def api(start, plain_dir):
    # a short context bounds each generated request's work (max_tokens defaults to the rest of it)
    srv = start("--model", str(plain_dir), "--served-model-name", "tiny", "--kv-cache-gb", "0.01",
                "--max-model-len", "48")
    return srv.url, schemathesis.openapi.from_url(srv.url + "/openapi.json")


def test_the_schema_covers_every_route(api):
    _, schema = api
    found = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert found == set(OPERATIONS)


@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_no_server_errors(api, method, path):
    url, schema = api

    @given(case=schema[path][method].as_strategy())
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        response = case.call(base_url=url, timeout=30)
        assert response.status_code < 500, f"{method} {path} -> {response.status_code}: {response.text[:300]}"
        if response.status_code >= 400:
            body = response.json()
            assert "error" in body and body["error"]["message"], body

    check()
