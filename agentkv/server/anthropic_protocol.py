"""Anthropic Messages API request/response bodies (what Claude Code and the official client send and read).

Usage follows Anthropic's accounting: `input_tokens` are the prompt tokens neither read from nor written to
the cache, so input_tokens + cache_read_input_tokens + cache_creation_input_tokens is the whole prompt. agentkv
caches every full block automatically, so `cache_control` markers are accepted and need nothing more.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from agentkv.server.fields import Body as _Body
from agentkv.server.fields import MaxTokens, Stops, TopK


class TextBlock(_Body):
    type: Literal["text"]
    text: str


class ToolUseBlock(_Body):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(_Body):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock] = ""
    is_error: bool = False


Block = Annotated[TextBlock | ToolUseBlock | ToolResultBlock, Field(discriminator="type")]


class Message(_Body):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class ToolDef(_Body):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolChoice(_Body):
    type: Literal["auto", "none"] = Field(
        description="'any' and 'tool' need constrained decoding, which is not implemented")


class Metadata(_Body):
    user_id: str | None = Field(None, max_length=512)  # the conversation, for the cache policy


class CountTokensRequest(_Body):
    model: str
    messages: list[Message] = Field(min_length=1)
    system: str | list[TextBlock] | None = None
    tools: list[ToolDef] | None = None
    tool_choice: ToolChoice | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: MaxTokens
    stop_sequences: Stops | None = None
    temperature: float = Field(1.0, ge=0, le=1)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: TopK = 0
    stream: bool = False
    metadata: Metadata | None = None
    cache_salt: str | None = Field(None, max_length=256)  # extension, as on the OpenAI endpoints


class AnthropicUsage(BaseModel):
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_creation_input_tokens: int
    cached_tokens_per_tier: dict[str, int]  # extension


class MessagesResponse(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[dict[str, Any]]
    stop_reason: Literal["end_turn", "max_tokens", "stop_sequence", "tool_use"]
    stop_sequence: str | None = None
    usage: AnthropicUsage
