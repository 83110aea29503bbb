"""The responses the Responses API keeps for `previous_response_id` and `GET /v1/responses/{id}`: per tenant,
each tenant within its own count and byte budgets (its oldest out first), each response for `retention_s`.
A shared store let one tenant's flood evict another's conversations; counting responses alone let one
tenant keep gigabytes (a response's conversation grows with every turn)."""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Kept:
    at: float
    size: int  # bytes of its JSON: what the byte budget counts
    messages: list[dict[str, Any]]  # the conversation, the response's reply included
    body: dict[str, Any]  # the response as GET returns it


@dataclass(slots=True)
class _Shelf:
    """One tenant's responses, oldest first."""

    kept: OrderedDict[str, Kept] = field(default_factory=OrderedDict)
    size: int = 0

    def pop_oldest(self) -> None:
        self.size -= self.kept.popitem(last=False)[1].size


class ResponseStore:
    def __init__(self, retention_s: float = 3600.0, max_count: int = 10_000, max_bytes: int = 256 << 20) -> None:
        """Budgets per tenant: `max_count` responses and `max_bytes` of them."""
        self.retention_s, self.max_count, self.max_bytes = retention_s, max_count, max_bytes
        self._shelves: dict[str, _Shelf] = {}
        self._lock = threading.Lock()  # requests are translated on worker threads (`previous_response_id`)

    def get(self, tenant: str, response_id: str) -> Kept | None:
        with self._lock:
            shelf = self._shelves.get(tenant)
            if shelf is None:
                return None
            cutoff = time.monotonic() - self.retention_s
            while shelf.kept and next(iter(shelf.kept.values())).at < cutoff:
                shelf.pop_oldest()
            return shelf.kept.get(response_id)

    def put(self, tenant: str, response_id: str, messages: list[dict[str, Any]], body: dict[str, Any]) -> bool:
        """Keep a response, the tenant's oldest making room; False (not kept) if it alone is over the budget."""
        size = len(json.dumps([messages, body], ensure_ascii=False).encode())
        if size > self.max_bytes:
            return False
        with self._lock:
            shelf = self._shelves.setdefault(tenant, _Shelf())
            shelf.kept[response_id] = Kept(time.monotonic(), size, messages, body)
            shelf.size += size
            while len(shelf.kept) > self.max_count or shelf.size > self.max_bytes:
                shelf.pop_oldest()
        return True

    def held(self, tenant: str) -> tuple[int, int]:
        """(responses, bytes) kept for `tenant`."""
        shelf = self._shelves.get(tenant, _Shelf())
        return len(shelf.kept), shelf.size
