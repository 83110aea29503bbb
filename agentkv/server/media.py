"""Message content the engine cannot read: an image (audio, file) part is refused with a 400 naming it, never
dropped.

The engine serves text models (a multimodal folder's text path: `model/loader.py` skips its vision tower), so
a part that carries an image — OpenAI's `image_url`, Anthropic's `image` (also inside a `tool_result`), the
Responses API's `input_image` — or audio or a file would otherwise fail as an unknown part type, or be
answered as if it were not there.
"""

from __future__ import annotations

from typing import Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

MEDIA_PARTS = {"image_url": "image", "image": "image", "input_image": "image",  # part type -> what it carries
               "input_audio": "audio", "file": "file", "input_file": "file", "document": "document"}
MAX_DEPTH = 8  # content nests a tool result's or an item's content: a few levels, never more


def first_media(content: Any) -> tuple[str, str] | None:
    """The first image (audio, file) part in a list of parts, nested `content` lists searched too: (where, e.g.
    '1' or '0.content.2', its type), or None. Iterative and bounded: it runs on the raw body, before any depth check."""
    stack: list[tuple[Any, str]] = [(content, "")]
    while stack:
        parts, where = stack.pop()
        if not isinstance(parts, list) or where.count(".") > MAX_DEPTH:
            continue
        nested = []
        for i, part in enumerate(parts):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in MEDIA_PARTS:
                return f"{where}{i}", kind
            if isinstance(part, dict):
                nested.append((part.get("content"), f"{where}{i}.content."))
        stack.extend(reversed(nested))
    return None


def refuse_media(content: Any) -> Any:
    """The content unchanged, unless a part of it is an image (audio, file): then one error naming that part."""
    found = first_media(content)
    if found is not None:
        where, kind = found
        raise PydanticCustomError("media_input", "part {where} is of type '{kind}': {what} inputs are not "
                                  "supported by this server", {"where": where, "kind": kind, "what": MEDIA_PARTS[kind]})
    return content


TextOnly = BeforeValidator(refuse_media)  # on every field that holds message content parts (or Responses items)
