"""OpenAI and Anthropic conversations as the model's chat template reads them (the HF convention: roles
system/user/assistant/tool, assistant `tool_calls` with arguments as objects, tools in OpenAI's shape)."""

from __future__ import annotations

import json
from typing import Any

from agentkv.server import anthropic_protocol as anth
from agentkv.server import openai_protocol as oai
from agentkv.server.errors import APIError
from agentkv.server.fields import MAX_DEPTH, json_fault

Messages = list[dict[str, Any]]
Tools = list[dict[str, Any]] | None


def openai_messages(req: oai.ChatCompletionRequest) -> tuple[Messages, Tools]:
    out: Messages = []
    for i, m in enumerate(req.messages):
        msg: dict[str, Any] = {"role": "system" if m.role == "developer" else m.role, "content": _text(m.content)}
        if m.name:
            msg["name"] = m.name
        if m.tool_calls:
            msg["tool_calls"] = [_call(c.id, c.function.name, parse_arguments(c.function.arguments,
                                 f"messages.{i}.tool_calls.{j}.function.arguments")) for j, c in enumerate(m.tool_calls)]
        if m.role == "tool":
            msg["tool_call_id"] = m.tool_call_id or ""
        out.append(msg)
    use_tools = req.tools and req.tool_choice != "none"
    return out, [t.model_dump(exclude_none=True) for t in req.tools] if use_tools else None  # type: ignore[union-attr]


def anthropic_messages(req: anth.CountTokensRequest) -> tuple[Messages, Tools]:
    out: Messages = []
    if req.system:
        out.append({"role": "system", "content": req.system if isinstance(req.system, str)
                    else "".join(b.text for b in req.system)})
    for m in req.messages:
        blocks = [anth.TextBlock(type="text", text=m.content)] if isinstance(m.content, str) else m.content
        text, calls, reasoning = "", [], ""
        for b in blocks:
            if isinstance(b, anth.TextBlock):
                text += b.text
            elif isinstance(b, anth.ThinkingBlock):  # Qwen3-style templates read it as reasoning_content
                reasoning += b.thinking
            elif isinstance(b, anth.ToolUseBlock):
                calls.append(_call(b.id, b.name, b.input))
            else:  # a tool result becomes a tool message, after any text before it
                if text:
                    out.append({"role": m.role, "content": text})
                    text = ""
                content = b.content if isinstance(b.content, str) else "".join(t.text for t in b.content)
                out.append({"role": "tool", "tool_call_id": b.tool_use_id,
                            "content": f"Error: {content}" if b.is_error else content})
        if text or calls or reasoning:
            out.append({"role": m.role, "content": text, **({"tool_calls": calls} if calls else {}),
                        **({"reasoning_content": reasoning} if reasoning else {})})
    use_tools = req.tools and not (req.tool_choice and req.tool_choice.type == "none")
    tools = [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                               "parameters": t.input_schema}} for t in req.tools or []]
    return out, tools if use_tools else None


def _call(call_id: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def parse_arguments(text: str, param: str) -> dict[str, Any]:
    """Templates render arguments as an object (`| tojson`), so the JSON text a client sends back is decoded."""
    try:
        args = json.loads(text or "{}")
    except json.JSONDecodeError as e:
        raise APIError(400, f"{param}: not valid JSON ({e.msg} at character {e.pos})", param=param) from None
    except RecursionError:  # the decoder's own stack guard, thousands of levels down
        raise APIError(400, f"{param}: nested deeper than {MAX_DEPTH} levels", param=param) from None
    if not isinstance(args, dict):
        raise APIError(400, f"{param}: must be a JSON object", param=param)
    if (fault := json_fault(args, param)) is not None:
        raise APIError(400, fault, param=param)
    return args


def _text(content: str | list[oai.TextPart] | None) -> str:
    if content is None:
        return ""
    return content if isinstance(content, str) else "".join(p.text for p in content)
