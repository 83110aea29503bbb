"""Who is asking, and which of their prompt's tokens may share KV with other tenants.

Every tenant's prompts are hashed in the tenant's own cache namespace (plus the request's `cache_salt`, if
any), so no prompt of one tenant can ever hit, or time, another's KV. The exception is what the operator
declares public (`--public-prefix FILE`: e.g. a system prompt every agent of a product shares): when a
prompt starts with a public text, that many leading tokens are hashed in the public namespace, so all
tenants share its KV, while everything after it stays in the tenant's namespace. Only the operator's text
is ever shared: a prompt that matches it partly shares nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agentkv.engine.tokenizer import Tokenizer


def load_api_keys(path: str) -> dict[str, str]:
    """`KEY TENANT` per line; `#` starts a comment line. Keys are secrets: errors never echo them."""
    keys: dict[str, str] = {}
    for lineno, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"{path}:{lineno}: expected two fields 'KEY TENANT', found {len(fields)}")
        key, tenant = fields
        if key in keys:
            raise ValueError(f"{path}:{lineno}: this key is already listed (for tenant {keys[key]!r})")
        keys[key] = tenant
    if not keys:
        raise ValueError(f"{path}: no API keys (expected 'KEY TENANT' lines)")
    return keys


@dataclass(slots=True)
class PublicPrefixes:
    """Token ids of each public text as it starts a prompt: as a raw completion prompt (with the BOS token
    the completions endpoint adds) and as the system message of a chat (rendered through the template)."""

    heads: list[list[int]]

    @staticmethod
    def load(paths: list[str], tokenizer: Tokenizer | None) -> PublicPrefixes:
        heads: list[list[int]] = []
        for path in paths:
            text = Path(path).read_text()
            if not text.strip():
                raise ValueError(f"--public-prefix {path}: the file is empty")
            if tokenizer is None:
                raise ValueError("--public-prefix needs the model's tokenizer.json")
            heads.append(tokenizer.encode(text))
            if tokenizer.chat_template:
                rendered = tokenizer.render_chat([{"role": "system", "content": text}], add_generation_prompt=False)
                at = rendered.find(text)
                if at >= 0:
                    heads.append(tokenizer.encode(rendered[: at + len(text)], add_special_tokens=False))
        return PublicPrefixes(heads)

    def public_tokens(self, prompt: list[int]) -> int:
        """Leading tokens of `prompt` that are a public text (0 if none). The text's last token may differ
        (the prompt's next characters can merge into it), so it is the one token not required to match."""
        best = 0
        for head in self.heads:
            n = _common_prefix(head, prompt)
            if n >= len(head) - 1:
                best = max(best, n)
        return best


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
