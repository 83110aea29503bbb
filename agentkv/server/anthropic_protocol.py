"""Anthropic Messages API request/response bodies (what Claude Code and the official client send and read).

Usage follows Anthropic's accounting: `input_tokens` are the prompt tokens neither read from nor written to
the cache, so input_tokens + cache_read_input_tokens + cache_creation_input_tokens is the whole prompt. agentkv
caches every full block automatically, so `cache_control` markers are accepted and need nothing more.
`thinking` is passed to chat templates that have a thinking mode (`enable_thinking`) and refused otherwise;
`context_management` (Claude Code sends `clear_thinking` with `keep: all`) and `output_config.effort` are
accepted: the first asks for nothing to be cleared, the second has no counterpart in an open model.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from agentkv.server.fields import Body as _Body
from agentkv.server.fields import MaxTokens, Stops, TopK
from agentkv.server.media import TextOnly


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


class ThinkingBlock(_Body):
    type: Literal["thinking"]
    thinking: str
    signature: str = ""


Block = Annotated[TextBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock, Field(discriminator="type")]


class Message(_Body):
    role: Literal["user", "assistant", "system"]  # Claude Code sends system messages between turns
    content: Annotated[str | list[Block], TextOnly]


class ToolDef(_Body):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class ToolChoice(_Body):
    type: Literal["auto", "none", "any", "tool"]
    name: str | None = None  # with 'tool'
    disable_parallel_tool_use: bool = False

    @property
    def forced(self) -> str | None:
        """None (the model decides), "*" (any tool) or the tool's name."""
        return "*" if self.type == "any" else self.name if self.type == "tool" else None

    @model_validator(mode="after")
    def _named(self) -> ToolChoice:
        if self.type == "tool" and not self.name:
            raise ValueError("type 'tool' needs the tool's 'name'")
        return self


class Thinking(_Body):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(None, ge=1)


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
    thinking: Thinking | None = None
    cache_salt: str | None = Field(None, max_length=256)  # extension, as on the OpenAI endpoints


class ModelInfo(BaseModel):
    type: Literal["model"] = "model"
    id: str
    display_name: str
    created_at: str  # RFC 3339


class ModelList(BaseModel):
    data: list[ModelInfo]
    has_more: bool = False
    first_id: str | None
    last_id: str | None


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
