"""Structured outputs in the engine: a constrained request's tokens follow its grammar step by step, while an
unconstrained request batched with it gets exactly the tokens it gets alone (masks touch only their rows)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from agentkv.engine.grammar import StructuredOutputsParams
from agentkv.engine.llm import LLM, SamplingParams
from tests.engine.conftest import CHAT_REPLY, write_chat_checkpoint

SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}, "n": {"type": "integer", "maximum": 9}},
          "required": ["ok", "n"], "additionalProperties": False}
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['content'] }}<|im_end|>{% endfor %}<|im_start|>{{ '\\n' }}"


@pytest.fixture(scope="module")
def llm(tmp_path_factory) -> LLM:
    return LLM(str(write_chat_checkpoint(tmp_path_factory.mktemp("chat-engine"), TEMPLATE)), device="cpu",
               kv_cache_bytes=4 << 20, check_invariants=True)


def test_masks_touch_only_their_rows(llm):
    prompt = llm.tokenizer.encode_chat([{"content": "hello"}])
    free = SamplingParams(max_tokens=12, temperature=0.8, seed=7)
    alone = llm.generate([prompt], free)[0].outputs[0]
    specs = [StructuredOutputsParams(json=SCHEMA), StructuredOutputsParams(regex="[a-c]{4}"),
             StructuredOutputsParams(json_object=True)]
    outs = llm.generate([prompt] * 4, [free, *(SamplingParams(max_tokens=40, temperature=0, structured_outputs=s)
                                              for s in specs)])
    assert outs[0].outputs[0].token_ids == alone.token_ids and alone.text == CHAT_REPLY
    jsonschema.validate(json.loads(outs[1].outputs[0].text), SCHEMA)
    assert len(outs[2].outputs[0].text) == 4 and set(outs[2].outputs[0].text) <= set("abc")
    assert isinstance(json.loads(outs[3].outputs[0].text), dict)
    assert all(o.outputs[0].finish_reason == "stop" for o in outs)


def test_bad_grammars_are_value_errors(llm):
    with pytest.raises(ValueError, match="refused"):
        llm.generate(["x"], SamplingParams(structured_outputs=StructuredOutputsParams(json={"type": "frob"})))
    with pytest.raises(ValueError, match="exactly one"):
        StructuredOutputsParams(json={}, regex="a")


def test_the_cache_is_bounded_by_bytes_per_tenant(tmp_path):
    """One tenant's flood of distinct schemas evicts its own grammars, never another tenant's; the total stays
    within its bytes; a grammar over a tenant's budget is compiled and used, not kept."""
    from tokenizers import Tokenizer

    from agentkv.engine.grammar import Grammars

    text = (write_chat_checkpoint(tmp_path, "x") / "tokenizer.json").read_text()
    vocab = Tokenizer.from_str(text).get_vocab_size()
    g = Grammars(text, vocab, [0], max_bytes=60_000, tenant_bytes=30_000)

    def schema(i: int, pad: int = 0) -> StructuredOutputsParams:
        return StructuredOutputsParams(json={"type": "object", "properties": {f"k{i}": {"const": "x" * pad}}})

    mine = g.compile(schema(-1), "b")
    for i in range(200):
        g.compile(schema(i, 500), "a")
        assert g.held("a") <= 30_000
    assert g.compile(schema(-1), "b") is mine  # still cached: a's flood evicted a's own
    huge = g.compile(schema(-2, 40_000), "c")
    assert huge.compute_bitmask() and g.held("c") == 0  # compiled, not kept
    for i in range(200):
        g.compile(schema(1000 + i, 500), "d")
    assert g.held("a") + g.held("b") + g.held("d") <= 60_000 and g.held("b") > 0
