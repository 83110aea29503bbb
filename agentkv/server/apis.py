"""Every API the server speaks, by path: its request model and its adapter's `to_request` (what the Ray
gateway reads to route a request on the prompt a replica will run)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel

from agentkv.server import anthropic_protocol as anth
from agentkv.server import api_chat, api_completions, api_messages, api_responses
from agentkv.server import openai_protocol as oai
from agentkv.server.pipeline import Ask, Context
from agentkv.server.responses_protocol import ResponsesRequest

APIS: dict[str, tuple[type[BaseModel], Callable[[Any, Mapping[str, str], Context], Ask]]] = {
    "/v1/chat/completions": (oai.ChatCompletionRequest, api_chat.to_request),
    "/v1/completions": (oai.CompletionRequest, api_completions.to_request),
    "/v1/messages": (anth.MessagesRequest, api_messages.to_request),
    "/v1/responses": (ResponsesRequest, api_responses.to_request),
}


def ask_of(path: str, body: bytes, headers: Mapping[str, str], ctx: Context) -> Ask | None:
    """The request at `path` as its endpoint will see it; None for a path that runs no model. A body the
    endpoint would refuse raises (pydantic's ValidationError, or APIError)."""
    api = APIS.get(path)
    if api is None:
        return None
    model, to_request = api
    return to_request(model.model_validate_json(body), headers, ctx)
