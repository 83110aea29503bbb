"""The Responses store keeps each tenant within its own count and byte budgets: one tenant's flood evicts only
its own oldest responses; a response over the byte budget is not kept; expiry is per retention window."""

from __future__ import annotations

from agentkv.server.response_store import ResponseStore


def _msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_a_tenants_flood_evicts_only_its_own():
    store = ResponseStore(max_count=100, max_bytes=1 << 20)
    store.put("b", "resp_b", _msgs("keep me"), {"id": "resp_b"})
    for i in range(10_050):
        store.put("a", f"resp_a{i}", _msgs("x"), {"id": f"resp_a{i}"})
    assert store.get("b", "resp_b").body == {"id": "resp_b"}
    assert store.held("a")[0] == 100 and store.get("a", "resp_a0") is None and store.get("a", "resp_a10049")
    assert store.get("a", "resp_b") is None  # another tenant's id is not found


def test_bytes_are_budgeted_and_an_oversized_response_is_not_kept():
    store = ResponseStore(max_count=10_000, max_bytes=100_000)
    assert not store.put("a", "huge", _msgs("x"), {"metadata": {"k": "v" * 200_000}})
    assert store.get("a", "huge") is None
    for i in range(50):
        assert store.put("a", f"r{i}", _msgs("y" * 10_000), {})
        assert store.held("a")[1] <= 100_000
    assert store.get("a", "r49") is not None and store.get("a", "r0") is None


def test_responses_expire_after_the_retention_window():
    store = ResponseStore(retention_s=0.0)
    store.put("a", "r", _msgs("x"), {})
    assert store.get("a", "r") is None and store.held("a") == (0, 0)
