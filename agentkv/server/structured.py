"""What a request constrains its reply to, as `StructuredOutputsParams` for the grammar engine: a forced tool
call (OpenAI `tool_choice` "required" or a named function, Anthropic "any" or "tool", the Responses API's
equivalents), written in the format of the server's tool-call parser so that it parses back as a call, or
a JSON reply (`response_format` json_object / json_schema, the Responses API's `text.format`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agentkv.engine.grammar import StructuredOutputsParams
from agentkv.server.chat import Tools
from agentkv.server.errors import APIError
from agentkv.server.tool_parsers import PARSERS


def forced_call(parser: str, tools: Tools, choice: str | None, parallel: bool, literal: Callable[[str], str],
                ) -> StructuredOutputsParams | None:
    """`choice`: None (the model decides), "*" (any of the tools) or a tool's name; `literal`: the grammar
    engine's way to write a piece of text (`Grammars.literal`)."""
    if choice is None:
        return None
    if not tools:
        raise APIError(400, "tool_choice: forcing a tool call needs 'tools'", param="tool_choice")
    if choice != "*":
        tools = [t for t in tools if t["function"]["name"] == choice]
        if not tools:
            raise APIError(400, f"tool_choice: no tool named {choice!r} in 'tools'", param="tool_choice")
    return StructuredOutputsParams(grammar=PARSERS[parser].grammar(tools, parallel, literal))


def json_reply(kind: str, schema: dict[str, Any] | None = None) -> StructuredOutputsParams | None:
    """`kind`: text (no constraint), json_object or json_schema."""
    if kind == "json_object":
        return StructuredOutputsParams(json_object=True)
    if kind == "json_schema":
        return StructuredOutputsParams(json=schema or {})
    return None
