"""Message content the engine cannot read: an image part is refused with a 400 naming it, never dropped.

The engine serves text models (a multimodal folder's text path: `model/loader.py` skips its vision tower), so
a part that carries an image — OpenAI's `image_url`, Anthropic's `image` (also inside a `tool_result`), the
Responses API's `input_image` — would otherwise fail as an unknown part type, or be answered as if the image
were not there.
"""

from __future__ import annotations

from typing import Any

from pydantic import BeforeValidator
from pydantic_core import PydanticCustomError

IMAGE_PARTS = frozenset({"image_url", "image", "input_image"})
MAX_DEPTH = 8  # content nests a tool result's or an item's content: a few levels, never more


def first_image(content: Any) -> tuple[str, str] | None:
    """The first image part in a list of parts, nested `content` lists searched too: (where, e.g. '1' or
    '0.content.2', its type), or None. Iterative and bounded: it runs on the raw body, before any depth check."""
    stack: list[tuple[Any, str]] = [(content, "")]
    while stack:
        parts, where = stack.pop()
        if not isinstance(parts, list) or where.count(".") > MAX_DEPTH:
            continue
        nested = []
        for i, part in enumerate(parts):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in IMAGE_PARTS:
                return f"{where}{i}", kind
            if isinstance(part, dict):
                nested.append((part.get("content"), f"{where}{i}.content."))
        stack.extend(reversed(nested))
    return None


def refuse_images(content: Any) -> Any:
    """The content unchanged, unless a part of it is an image: then one error naming that part."""
    found = first_image(content)
    if found is not None:
        raise PydanticCustomError("image_input", "part {where} is of type '{kind}': image inputs are not supported "
                                  "by this server", {"where": found[0], "kind": found[1]})
    return content


TextOnly = BeforeValidator(refuse_images)  # on every field that holds message content parts (or Responses items)
