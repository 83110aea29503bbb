"""What every request body inherits, so that a field's range is checked at the edge, against the engine's real
limits, and nothing a client sends can raise later (on the engine thread, in the tokenizer, in a response).

- numbers: no NaN or infinity; seeds, top_k and max_tokens within what the engine takes (`engine/sequence.py`
  owns those limits); at most 64 stop strings of at most 1,024 characters;
- text: valid Unicode. JSON may spell a lone surrogate (`"\\ud800"`), which Python keeps in a str but no
  tokenizer or UTF-8 encoder accepts: refused with the field's name;
- free-form JSON (schemas, arguments, metadata): no NaN, and nested at most MAX_DEPTH deep.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agentkv.engine.sequence import MAX_TOKENS_MAX, SEED_MAX, SEED_MIN, TOP_K_MAX

Seed = Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)]
TopK = Annotated[int, Field(ge=0, le=TOP_K_MAX)]
MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_MAX)]
# every stop string is searched for after every token, on the engine thread: a bounded few of bounded length
Stops = Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=64)]


MAX_DEPTH = 64  # nesting of free-form JSON (tool schemas, arguments, metadata): real schemas stay under 20


class Body(BaseModel):
    """A request body (or a part of one): unknown fields ignored, as OpenAI and Anthropic do."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    @model_validator(mode="after")
    def _valid_json(self) -> Any:
        for name in type(self).model_fields:
            fault = json_fault(getattr(self, name), name)
            if fault is not None:
                raise ValueError(fault)
        return self


def json_fault(value: Any, path: str) -> str | None:
    """What is wrong with a free-form value, naming where (None: nothing): a lone surrogate, a NaN or an
    infinity (no JSON encoder writes them back), or nesting deeper than MAX_DEPTH (what walks it recursively,
    a template's `tojson` included, would overflow the stack). Iterative, so that no depth can overflow it;
    nested bodies check themselves."""
    stack: list[tuple[Any, tuple[Any, ...]]] = [(value, (path,))]
    while stack:
        v, where = stack.pop()  # where: the keys down to v, joined only for an error (keys may be megabytes)
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return (f"{_path(where)}: contains a lone surrogate (an unpaired \\ud800-\\udfff escape), "
                        "which is not valid Unicode")
        elif isinstance(v, float) and not math.isfinite(v):
            return f"{_path(where)}: {v} is not a JSON number"
        elif isinstance(v, list | tuple | dict):
            if len(where) > MAX_DEPTH:
                return f"{_path(where[:3])}...: nested deeper than {MAX_DEPTH} levels"
            if isinstance(v, dict):
                stack.extend((k, (*where, k)) for k in v)
                stack.extend((x, (*where, k)) for k, x in v.items())
            else:
                stack.extend((x, (*where, i)) for i, x in enumerate(v) if not isinstance(x, BaseModel))
    return None


def _path(keys: tuple[Any, ...]) -> str:
    return ".".join(str(k)[:64].encode("utf-8", "backslashreplace").decode() for k in keys)
