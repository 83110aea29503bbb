"""The OpenAI Responses API's request: `input` as text or items (messages, function calls and their outputs,
reasoning), tools (function tools, also inside a `namespace`), `text.format` and the sampling fields."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from agentkv.server.fields import Body as _Body  # the checks every body has (Unicode, NaN, nesting)
from agentkv.server.fields import MaxTokens, TopK
from agentkv.server.media import TextOnly

# OpenAI's API reference (platform.openai.com/docs/api-reference/responses/create, read 2026-12): "Set of 16
# key-value pairs ... Keys are strings with a maximum length of 64 characters. Values are strings with a
# maximum length of 512 characters." A stored response keeps its metadata, so the bound is the store's too.
Metadata = Annotated[dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
                     Field(max_length=16)]


class ContentPart(_Body):
    type: Literal["input_text", "output_text", "text", "summary_text", "reasoning_text", "refusal"]
    text: str = ""
    refusal: str = ""


class MessageItem(_Body):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]


class FunctionCallItem(_Body):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str = "{}"


class FunctionCallOutputItem(_Body):
    type: Literal["function_call_output"]
    call_id: str
    output: str | list[ContentPart]


class ReasoningItem(_Body):
    type: Literal["reasoning"]
    content: list[ContentPart] | None = None  # the reasoning text (summaries are not the model's own words)


Item = FunctionCallItem | FunctionCallOutputItem | ReasoningItem | MessageItem


class ToolDef(_Body):
    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    tools: list[ToolDef] | None = None  # a namespace's


class FunctionChoice(_Body):
    type: Literal["function"]
    name: str


class TextFormat(_Body):
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(_Body):
    format: TextFormat = Field(default_factory=TextFormat)


class ResponsesRequest(_Body):
    model: str
    input: Annotated[str | list[Item], TextOnly] = Field(min_length=1)
    instructions: str | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: TopK = 0  # extension, as on the other endpoints
    stream: bool = False
    previous_response_id: str | None = None
    store: bool = True
    prompt_cache_key: str | None = Field(None, max_length=512)
    user: str | None = Field(None, max_length=512)
    metadata: Metadata | None = None
    reasoning: dict[str, Any] | None = None  # echoed: the model's template decides whether it reasons
    cache_salt: str | None = Field(None, max_length=256)  # extension

    @property
    def forced_tool(self) -> str | None:
        """What `tool_choice` forces: None (the model decides), "*" (any tool) or a tool's name."""
        if isinstance(self.tool_choice, FunctionChoice):
            return self.tool_choice.name
        return "*" if self.tool_choice == "required" else None
