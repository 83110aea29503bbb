"""Each tenant's request bytes in flight, capped, so that one tenant's large bodies cannot take the memory and
the decoding every tenant shares: a request's bytes count from its headers (its Content-Length, or a chunked
body's bytes as they arrive) until its response's last byte, as its body, then its prompt, live that long.
Past the tenant's budget a request gets 429 with `Retry-After` and the API's JSON error body; other tenants'
requests are not affected. The open server (no API keys) is one tenant.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from fastapi import Request
from starlette.exceptions import HTTPException

from agentkv.server.errors import APIError, error_response

RETRY_AFTER_S = 1  # the budget frees as the tenant's requests finish


class TenantBytes:
    """ASGI middleware inside the authentication (it reads the tenant that put in the request's state)."""

    def __init__(self, app: Any, budget: int) -> None:
        self.app, self.budget = app, budget
        self.held: defaultdict[str, int] = defaultdict(int)

    def error(self, tenant_held: int) -> APIError:
        return APIError(429, f"this tenant has {tenant_held} request bytes in flight, at its limit of {self.budget} "
                        f"(--max-tenant-inflight-bytes); retry after {RETRY_AFTER_S} s", code="tenant_bytes_in_flight",
                        headers={"Retry-After": str(RETRY_AFTER_S)})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        tenant = scope.get("state", {}).get("tenant") if scope["type"] == "http" else None
        if tenant is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        taken = int(length) if length.isdigit() else 0
        if self.held[tenant] + taken > self.budget:
            await error_response(Request(scope), self.error(self.held[tenant]))(scope, receive, send)
            return
        self.held[tenant] += taken

        async def counted() -> dict:
            nonlocal taken
            message = await receive()
            if not length.isdigit():  # chunked: its bytes count as they arrive
                more = len(message.get("body", b""))
                if self.held[tenant] + more > self.budget:  # raised inside the app, whose handler answers it
                    err = self.error(self.held[tenant])
                    raise HTTPException(429, err.message, headers={**(err.headers or {}), "connection": "close"})
                self.held[tenant] += more
                taken += more
            return message

        try:
            await self.app(scope, counted, send)
        finally:
            self.held[tenant] -= taken
            if not self.held[tenant]:
                del self.held[tenant]
