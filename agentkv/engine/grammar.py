"""Constrained decoding: a request's output held to a JSON schema, a regex or a Lark grammar by llguidance
(the grammar engine vLLM and SGLang also ship), one token mask per constrained row per step.

Why llguidance: one abi3 wheel with no dependencies (xgrammar pulls transformers' tree and its own FFI
runtime), masks in tens of microseconds on the CPU with no precompilation pass over the vocabulary, JSON
Schema support broad enough for agents' tool schemas, and Lark grammars with embedded `%json` for the
tool-call formats. A request without a grammar never reaches this file: the sampler's fast path is unchanged.

Compiled grammars are cached by their text (an agent sends the same tool schemas every turn), within byte
budgets per tenant; a request gets a copy of the cached matcher, so the engine thread never compiles.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

# compact JSON with the separators json.dumps (and so chat templates' `tojson`) writes: what models were
# trained on, and a bounded schema then has a bounded output (no whitespace to wander in)
JSON_STYLE = {"whitespace_flexible": False, "key_separator": ": ", "item_separator": ", "}


@dataclass(slots=True, frozen=True)
class StructuredOutputsParams:
    """vLLM's `SamplingParams.structured_outputs`: exactly one of these constrains the output."""

    json: dict[str, Any] | str | None = None  # a JSON schema (dict or its text)
    json_object: bool = False  # any JSON object
    regex: str | None = None
    grammar: str | None = None  # a Lark grammar (llguidance's dialect: `%json {...}` embeds a schema)

    def __post_init__(self) -> None:
        given = [self.json is not None, self.json_object, self.regex is not None, self.grammar is not None]
        if sum(given) != 1:
            raise ValueError("structured_outputs: give exactly one of json, json_object, regex, grammar")

    def lark(self) -> str:
        """The constraint as llguidance's grammar text (its cache key)."""
        import llguidance as lg

        if self.grammar is not None:
            return lg.LLMatcher.grammar_from_lark(self.grammar)
        if self.regex is not None:
            return lg.LLMatcher.grammar_from_regex(self.regex)
        schema = {"type": "object"} if self.json_object else self.json
        schema = json.loads(schema) if isinstance(schema, str) else schema
        return lg.LLMatcher.grammar_from_json_schema(schema, overrides=JSON_STYLE)  # type: ignore[arg-type]


@dataclass(slots=True)
class _Kept:
    matcher: Any
    tenant: str  # who compiled it: the one whose budget it counts against
    size: int  # its grammar text's bytes: the cost measure (a matcher's memory grows with its grammar)


class Grammars:
    """Grammars compiled against one tokenizer (server threads and the engine thread share it). The cache is
    bounded by grammar bytes, in all (`max_bytes`) and per tenant (`tenant_bytes`): one tenant's distinct
    schemas evict its own first, and past the total the largest holder's, so no tenant crowds out another's
    agents (whose tool schemas repeat every turn). A grammar over a tenant's budget is compiled, never kept."""

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_ids: list[int], max_bytes: int = 8 << 20,
                 tenant_bytes: int = 2 << 20) -> None:
        import llguidance as lg

        self.vocab_size = vocab_size
        self.tokenizer = lg.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=eos_token_ids)
        self._added = {t["content"]: t["id"] for t in json.loads(tokenizer_json).get("added_tokens", [])}
        self.max_bytes, self.tenant_bytes = max_bytes, tenant_bytes
        self._compiled: OrderedDict[str, _Kept] = OrderedDict()
        self._held: dict[str, int] = {}  # tenant -> bytes of its kept grammars
        self._lock = threading.Lock()

    def literal(self, text: str) -> str:
        """`text` as a Lark literal. A tokenizer's added token (Qwen's `<tool_call>`) is one token that the
        grammar engine reads as special, never as text: it is named by its id, as the model writes it."""
        return f"<[{self._added[text]}]>" if text in self._added else json.dumps(text)

    def compile(self, spec: StructuredOutputsParams, tenant: str = "") -> Any:
        """The matcher for `spec` at its start, its first mask computed (compiled once, then cached);
        ValueError naming what is wrong. Compiling holds no lock: a slow grammar delays only its request."""
        import llguidance as lg

        try:
            text = spec.lark()
        except (ValueError, TypeError) as e:
            raise ValueError(f"structured_outputs: {e}") from None
        with self._lock:
            kept = self._compiled.get(text)
            if kept is not None:
                self._compiled.move_to_end(text)
                return kept.matcher
        proto = lg.LLMatcher(self.tokenizer, text, log_level=0)
        if proto.is_error():
            raise ValueError(f"structured_outputs: the grammar engine refused it: {proto.get_error()}")
        proto.compute_bitmask()  # llguidance builds its lexer lazily: here, not on the engine thread's first step
        with self._lock:
            self._keep(text, proto, tenant)
        return proto

    def held(self, tenant: str) -> int:
        """Bytes of grammar kept for `tenant`."""
        return self._held.get(tenant, 0)

    def _keep(self, text: str, proto: Any, tenant: str) -> None:
        size = len(text.encode())
        if text in self._compiled or size > self.tenant_bytes:
            return
        self._compiled[text] = _Kept(proto, tenant, size)
        self._held[tenant] = self.held(tenant) + size
        while self._held[tenant] > self.tenant_bytes:
            self._evict(tenant)
        while sum(self._held.values()) > self.max_bytes:
            self._evict(max(self._held, key=self._held.__getitem__))

    def _evict(self, tenant: str) -> None:
        """`tenant`'s least recently used grammar out."""
        text = next(t for t, k in self._compiled.items() if k.tenant == tenant)
        self._held[tenant] -= self._compiled.pop(text).size
        if not self._held[tenant]:
            del self._held[tenant]

    def matcher(self, spec: StructuredOutputsParams) -> Any:
        """A fresh matcher for one request."""
        return self.compile(spec).deep_copy()


def apply_masks(logits: torch.Tensor, matchers: list[Any]) -> None:
    """Set to -inf the logits of the tokens each row's matcher forbids (rows without one are left alone; so
    is a matcher in error, whose mask would forbid everything)."""
    rows = [i for i, m in enumerate(matchers) if m is not None and not m.is_error()]
    if not rows:
        return
    vocab = logits.shape[-1]
    words = np.stack([np.frombuffer(matchers[i].compute_bitmask(), dtype=np.uint8) for i in rows])
    allowed = np.unpackbits(words, axis=1, bitorder="little")[:, :vocab].astype(bool)
    if allowed.shape[1] < vocab:  # tokens past the grammar's vocabulary (padding rows of the head): never
        allowed = np.pad(allowed, ((0, 0), (0, vocab - allowed.shape[1])))
    index = torch.tensor(rows, device=logits.device)
    mask = torch.from_numpy(allowed).to(logits.device, non_blocking=True)
    logits[index] = logits[index].masked_fill(~mask, float("-inf"))

