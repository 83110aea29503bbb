"""OpenAI chat-completions logs: rendering to tokens, chained block ids, session inference, tenants."""

from __future__ import annotations

import itertools
import json

import numpy as np

from agentkv.kvcache.block_hash import block_hashes, salt_hash
from agentkv.workload import load_trace

SYSTEM = {"role": "system", "content": "You are a coding agent. " * 40}
TOOLS = [{"type": "function", "function": {"name": "read_file", "parameters": {"path": "string"}}}]


def convo(user: str, turns: int) -> list[list[dict]]:
    """The message lists an agent loop sends: each request is the previous one plus reply and tool result."""
    msgs = [SYSTEM, {"role": "user", "content": user}]
    out = [list(msgs)]
    for k in range(turns - 1):
        msgs += [{"role": "assistant", "content": None, "tool_calls": [{"id": f"c{k}", "function": {"name": "read_file"}}]},
                 {"role": "tool", "tool_call_id": f"c{k}", "content": f"file {k} " * 150}]
        out.append(list(msgs))
    return out


def write_log(path, rows) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_sessions_are_inferred_from_resent_history(tmp_path):
    a, b = convo("fix the parser", 4), convo("write the docs", 3)
    rows = []
    for i in range(4):  # interleave the two agents' requests
        rows.append({"timestamp": 100 + 10 * i, "request": {"model": "m", "messages": a[i], "tools": TOOLS}})
        if i < 3:
            rows.append({"timestamp": 101 + 10 * i, "request": {"model": "m", "messages": b[i], "tools": TOOLS}})
    t = load_trace(write_log(tmp_path / "log.jsonl", rows))
    assert t.n_sessions == 2
    assert list(np.bincount(t.session)) == [4, 3]
    assert list(t.time[t.session == 0]) == [0.0, 10.0, 20.0, 30.0]
    # each request's blocks extend the previous one's: a growing prefix
    for s in range(2):
        reqs = np.flatnonzero(t.session == s)
        for i, j in itertools.pairwise(reqs):
            assert np.array_equal(t.blocks(j)[: len(t.blocks(i))], t.blocks(i))
    # the two sessions share the system prompt and tools, so their first blocks are the same
    assert t.blocks(0)[0] == t.blocks(1)[0]
    assert t.blocks(0)[-1] != t.blocks(1)[-1]


def test_tenants_never_share_blocks(tmp_path):
    msgs = convo("same prompt", 1)[0]
    rows = [{"timestamp": 1, "request": {"messages": msgs, "user": "alice"}},
            {"timestamp": 2, "request": {"messages": msgs, "user": "bob"}}]
    t = load_trace(write_log(tmp_path / "log.jsonl", rows))
    assert sorted(t.tenants) == ["alice", "bob"]
    assert not np.intersect1d(t.blocks(0), t.blocks(1)).size


def test_explicit_session_ids_and_output_tokens(tmp_path):
    msgs = convo("x", 2)
    rows = [
        {"timestamp": 1, "session_id": "A", "request": {"messages": msgs[0]},
         "response": {"usage": {"completion_tokens": 77}, "choices": [{"message": {"role": "assistant", "content": "ok"}}]}},
        {"timestamp": 2, "session_id": "B", "request": {"messages": msgs[1], "max_tokens": 33}},
    ]
    t = load_trace(write_log(tmp_path / "log.jsonl", rows))
    assert t.session_names == ["A", "B"]
    assert list(t.output_tokens) == [77, 33]


def test_block_ids_are_chained_hashes_of_full_blocks(tmp_path):
    from agentkv.workload.tokenize import ByteTokenizer, render_pieces

    msgs = convo("hello", 2)[1]
    t = load_trace(write_log(tmp_path / "log.jsonl", [{"messages": msgs}]), block_size=16)
    tokens = np.concatenate([ByteTokenizer().encode(p) for p in render_pieces(msgs)])
    assert t.input_tokens[0] == len(tokens)
    assert len(t.blocks(0)) == len(tokens) // 16  # partial last block is not named
    # dense ids preserve equality of the underlying hashes
    hashes = block_hashes(tokens, 16, salt_hash("default"))
    assert len(np.unique(hashes)) == len(np.unique(t.blocks(0)))


def test_real_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(["hello", "world", "agent", "tool"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    rows = [{"messages": [{"role": "user", "content": "hello world hello agent tool"}]}]
    t = load_trace(write_log(tmp_path / "log.jsonl", rows), tokenizer=str(tmp_path / "tokenizer.json"), block_size=4)
    rendered = tok.encode("<|im_start|>user\nhello world hello agent tool<|im_end|>\n", add_special_tokens=False)
    assert t.input_tokens[0] == len(rendered.ids)


def test_bad_messages_field(tmp_path):
    import pytest

    from agentkv.workload.errors import TraceError

    path = write_log(tmp_path / "log.jsonl", [{"messages": convo("a", 1)[0]}, {"messages": "hi"}])
    with pytest.raises(TraceError, match=r"log\.jsonl:line 2: field 'messages'"):
        load_trace(path)
