"""Server-sent events, as both APIs frame them, and the in-band error a stream ends with when it fails after
its headers went out."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi.responses import StreamingResponse

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
DONE = "data: [DONE]\n\n"
log = logging.getLogger("agentkv.server")


def data(obj: dict[str, Any]) -> str:
    """OpenAI's frame: data only."""
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def event(name: str, obj: dict[str, Any]) -> str:
    """Anthropic's (and the Responses API's) frame: a named event."""
    return f"event: {name}\ndata: {json.dumps(obj, ensure_ascii=False)}\n\n"


def response(events: AsyncIterator[str], anthropic: bool) -> StreamingResponse:
    return StreamingResponse(_in_band_errors(events, anthropic), media_type="text/event-stream", headers=SSE_HEADERS)


async def _in_band_errors(events: AsyncIterator[str], anthropic: bool) -> AsyncIterator[str]:
    """A stream that fails after its headers went out can only say so in-band, then stop."""
    try:
        async for e in events:
            yield e
    except Exception as e:
        log.exception("stream failed")
        if anthropic:
            yield event("error", {"type": "error", "error": {"type": "api_error", "message": str(e)}})
        else:
            yield data({"error": {"message": str(e), "type": "server_error", "param": None, "code": None}})
