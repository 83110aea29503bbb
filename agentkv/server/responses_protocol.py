"""The OpenAI Responses API's request: `input` as text or items (messages, function calls and their outputs,
reasoning), tools (function tools, also inside a `namespace`), `text.format` and the sampling fields."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


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
    input: str | list[Item] = Field(min_length=1)
    instructions: str | None = None
    tools: list[ToolDef] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice = "auto"
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)  # extension, as on the other endpoints
    stream: bool = False
    previous_response_id: str | None = None
    store: bool = True
    prompt_cache_key: str | None = Field(None, max_length=512)
    user: str | None = None
    metadata: dict[str, str] | None = None
    reasoning: dict[str, Any] | None = None  # echoed: the model's template decides whether it reasons
    cache_salt: str | None = Field(None, max_length=256)  # extension

    @property
    def forced_tool(self) -> str | None:
        """What `tool_choice` forces: None (the model decides), "*" (any tool) or a tool's name."""
        if isinstance(self.tool_choice, FunctionChoice):
            return self.tool_choice.name
        return "*" if self.tool_choice == "required" else None
