"""Turning chat messages into token ids for traces recorded as OpenAI chat-completions logs.

Block ids only need a rendering that is deterministic and prefix-stable: appending a message must extend the
token list, never change earlier tokens. So each message is rendered and tokenized on its own and the pieces
are concatenated. With a `tokenizer.json` the counts are the model's; without one the byte-level fallback
packs UTF-8 bytes four to a token, close to what BPE tokenizers give for English and code.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import numpy as np


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int] | np.ndarray: ...


class ByteTokenizer:
    """UTF-8 bytes packed `bytes_per_token` to a token: no vocabulary needed, counts near BPE's."""

    def __init__(self, bytes_per_token: int = 4) -> None:
        self.bytes_per_token = bytes_per_token

    def encode(self, text: str) -> np.ndarray:
        raw = text.encode("utf-8")
        k = self.bytes_per_token
        padded = np.frombuffer(raw + b"\0" * (-len(raw) % k), dtype=np.uint8).reshape(-1, k).astype(np.int64)
        return padded @ (256 ** np.arange(k, dtype=np.int64))


class HFTokenizer:
    """A `tokenizer.json` read with the `tokenizers` library (the engine extra)."""

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer as _Tok

        self._tok = _Tok.from_file(path)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids


def load_tokenizer(path: str | None) -> Tokenizer:
    return ByteTokenizer() if path is None else HFTokenizer(path)


def render_pieces(messages: list[dict[str, Any]], tools: list[Any] | None = None) -> list[str]:
    """One text per prompt part, ChatML-style: the tool schemas first (as agents place them), then each message."""
    pieces = []
    if tools:
        pieces.append(f"<|im_start|>tools\n{json.dumps(tools, sort_keys=True)}<|im_end|>\n")
    for m in messages:
        pieces.append(render_message(m))
    return pieces


def render_message(m: dict[str, Any]) -> str:
    role = m.get("role", "user")
    body = _content_text(m.get("content"))
    if m.get("tool_calls"):
        body += json.dumps(m["tool_calls"], sort_keys=True)
    if m.get("tool_call_id"):
        body = f"[{m['tool_call_id']}] {body}"
    return f"<|im_start|>{role}\n{body}<|im_end|>\n"


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) and p.get("type") == "text" else
                       json.dumps(p, sort_keys=True) for p in content)
    return json.dumps(content, sort_keys=True)
