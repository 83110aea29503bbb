"""The model's tokenizer (`tokenizer.json`) and chat template (`tokenizer_config.json`)."""

from __future__ import annotations

import json
import os
from datetime import datetime
from functools import cached_property
from typing import Any

from tokenizers import Tokenizer as _Tokenizer

TEMPLATE_GLOBALS = ("raise_exception", "strftime_now")  # the functions chat templates get beside jinja's own (HF's)


class Tokenizer:
    def __init__(self, model_dir: str) -> None:
        path = os.path.join(model_dir, "tokenizer.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no tokenizer.json in the model folder")
        self._tok = _Tokenizer.from_file(path)
        cfg_path = os.path.join(model_dir, "tokenizer_config.json")
        self.config: dict[str, Any] = {}
        if os.path.exists(cfg_path):
            with open(cfg_path) as f:
                self.config = json.load(f)
        self.chat_template = _pick_template(self.config.get("chat_template"))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def to_json(self) -> str:
        """The tokenizer as tokenizer.json holds it (what the grammar engine reads)."""
        return self._tok.to_str()

    def token_str(self, i: int) -> str | None:
        """Token `i` as the vocabulary spells it (None for an id the vocabulary does not have)."""
        return self._tok.id_to_token(i)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                    tools: list[dict[str, Any]] | None = None, **extra: Any) -> str:
        """`tools` as OpenAI writes them ({"type": "function", "function": {...}}), which is what HF templates
        expect; template errors (`raise_exception`) surface as jinja2 TemplateError."""
        if not self.chat_template:
            raise ValueError("the model has no chat template (tokenizer_config.json 'chat_template'): send a raw prompt")
        special = {k: _token_text(self.config.get(k)) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt, tools=tools,
                                     **special, **extra)

    @cached_property
    def _template(self) -> Any:
        """Compiled once: templates with tool schemas are long and compiling them per request costs ms."""
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        def tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
                   sort_keys: bool = False) -> str:  # HF's: jinja's own HTML-escapes <, > and & in tool schemas
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
        env.globals.update(zip(TEMPLATE_GLOBALS, (raise_exception, lambda fmt: datetime.now().strftime(fmt)),
                               strict=True))
        env.filters["tojson"] = tojson
        return env.from_string(self.chat_template)

    def encode_chat(self, messages: list[dict[str, Any]], add_special_tokens: bool = False, **extra: Any) -> list[int]:
        """The template writes the chat's special tokens itself; `add_special_tokens` adds the tokenizer's too."""
        return self.encode(self.render_chat(messages, **extra), add_special_tokens=add_special_tokens)


def _pick_template(t: Any) -> str | None:
    if isinstance(t, list):  # [{"name": "default", "template": ...}, ...]
        named = {x.get("name"): x.get("template") for x in t if isinstance(x, dict)}
        return named.get("default") or next(iter(named.values()), None)
    return t


def _token_text(t: Any) -> str:
    if isinstance(t, dict):
        return str(t.get("content", ""))
    return "" if t is None else str(t)
