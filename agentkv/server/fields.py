"""What every request body inherits, so that a field's range is checked at the edge, against the engine's real
limits, and nothing a client sends can raise later (on the engine thread, in the tokenizer, in a response).

- numbers: no NaN or infinity; seeds, top_k and max_tokens within what the engine takes (`engine/sequence.py`
  owns those limits); at most 64 stop strings of at most 1,024 characters;
- text: valid Unicode. JSON may spell a lone surrogate (`"\\ud800"`), which Python keeps in a str but no
  tokenizer or UTF-8 encoder accepts: refused with the field's name.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from agentkv.engine.sequence import MAX_TOKENS_MAX, SEED_MAX, SEED_MIN, TOP_K_MAX

Seed = Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)]
TopK = Annotated[int, Field(ge=0, le=TOP_K_MAX)]
MaxTokens = Annotated[int, Field(ge=1, le=MAX_TOKENS_MAX)]
# every stop string is searched for after every token, on the engine thread: a bounded few of bounded length
Stops = Annotated[list[Annotated[str, Field(max_length=1024)]], Field(max_length=64)]


class Body(BaseModel):
    """A request body (or a part of one): unknown fields ignored, as OpenAI and Anthropic do."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    @model_validator(mode="after")
    def _valid_unicode(self) -> Any:
        for name in type(self).model_fields:
            where = _surrogate(getattr(self, name), name)
            if where is not None:
                raise ValueError(f"{where}: contains a lone surrogate (an unpaired \\ud800-\\udfff escape), "
                                 "which is not valid Unicode")
        return self


def _surrogate(value: Any, path: str) -> str | None:
    """The path to the first string in `value` that is not valid Unicode (nested bodies check themselves)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            if not isinstance(v, BaseModel) and (found := _surrogate(v, f"{path}.{i}")) is not None:
                return found
    elif isinstance(value, dict):
        for k, v in value.items():
            if (found := _surrogate(k, f"{path}.{k!r}") or _surrogate(v, f"{path}.{k}")) is not None:
                return found
    return None
