"""Synthesized prompts keep the trace's block structure through a real tokenizer; the plan and the prediction."""

from __future__ import annotations

import numpy as np
import pytest

from agentkv.replay import alphabet
from agentkv.replay.client import Outcome
from agentkv.replay.predict import ServerModel, as_served, kv_blocks_from_metrics, predict
from agentkv.replay.runner import Record, plan
from agentkv.replay.synth import Synth
from agentkv.workload.load import load_trace
from tests.conftest import CLAUDE_CODE, MOONCAKE, need

WORDS = ["alpha", "beta", "gamma", "delta", "omega", "read", "write", "file", "tool", "code", "test", "pass", "fail",
         "fix", "bug", "agent", "cache", "block", "token", "model", "hello", "world", "rust", "python"]


@pytest.fixture(scope="module")
def word_level(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *WORDS])}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok.save(str(path))
    return str(path), tok


@pytest.fixture(scope="module")
def sessions():
    return load_trace([str(need(CLAUDE_CODE / f"trace_00{n}.json.gz")) for n in ("02", "11")])


def lcp(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    d = np.flatnonzero(a[:n] != b[:n])
    return int(d[0]) if len(d) else n


def test_alphabet_from_tokenizer_has_one_token_per_word(word_level):
    path, tok = word_level
    a = alphabet.from_tokenizer(path)
    ids = [tok.encode(w, add_special_tokens=False).ids for w in a.words]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(ids)  # "[UNK]" stands for one word only
    assert set(a.words) - {a.words[ids.index([0])] if [0] in ids else ""} <= set(WORDS)


def test_equal_ids_give_equal_text_and_block_boundaries_hold(word_level, sessions):
    path, tok = word_level
    s = Synth(sessions, alphabet.from_tokenizer(path).words, token_scale=1 / 16)
    k = s.block_tokens
    assert k == 4
    for i in range(sessions.n_requests - 1):
        a, b = s.prompt_words(i), s.prompt_words(i + 1)
        n_full, tail = divmod(int(sessions.input_tokens[i]), 64)
        assert len(a) == n_full * k + min(k, round(tail / 16))
        shared = lcp(sessions.blocks(i)[:n_full], sessions.blocks(i + 1))
        if sessions.session[i] == sessions.session[i + 1]:
            assert shared > 0
        assert shared * k <= lcp(a, b) < (shared + 1) * k or lcp(a, b) == len(a)  # reuse is the trace's, no more
    tokens = tok.encode(s.text(s.prompt_words(3)), add_special_tokens=False).ids
    assert len(tokens) == len(s.prompt_words(3))  # one token per word, so trace blocks are k-token runs
    other = Synth(sessions, s.words, token_scale=1 / 16, seed=1)
    assert lcp(other.prompt_words(0), s.prompt_words(0)) < k  # the seed changes the text, not the structure
    fresh = Synth(sessions, s.words, token_scale=1 / 16, reuse=False)
    a, b = fresh.prompt_words(0), fresh.prompt_words(1)
    assert len(a) == len(s.prompt_words(0)) and lcp(a, b) < k  # same counts, nothing shared


def test_plan_keeps_sub_agents_with_their_parent_and_cuts_turns():
    trace = load_trace([str(need(CLAUDE_CODE / f"trace_00{n}.json.gz")) for n in ("02", "14", "03")])
    p = plan(trace)
    assert p.n_requests == trace.n_requests and p.starts is None  # no clock: a concurrency pool
    assert len(p.groups) == 3 and len(p.groups[1]) > 1  # trace_0014 runs a sub-agent
    for t in p.groups[1][1:]:
        assert trace.session_parent[trace.session[t[0]]] == trace.session[p.groups[1][0][0]]
    short = plan(trace, sessions=2, max_turns=2)
    assert len(short.groups) == 2 and all(len(t) <= 2 for g in short.groups for t in g)
    with pytest.raises(ValueError, match="--sessions"):
        plan(trace, sessions=0)


def test_plan_of_a_clocked_trace_starts_sessions_on_its_clock():
    trace = load_trace(str(need(MOONCAKE)))
    p = plan(trace, sessions=50)
    assert p.starts is not None and p.starts[0] == 0 and np.all(np.diff(p.starts) >= 0)


def served_records(synth: Synth, requests: list[int], cached: int = 0) -> list[Record]:
    out = []
    for t, i in enumerate(requests):
        o = Outcome(prompt_tokens=len(synth.prompt_words(i)) + 1, completion_tokens=4, cached_tokens=cached, e2e=0.1)
        out.append(Record(i, synth.trace.session_names[synth.trace.session[i]], t, float(t), o.prompt_tokens, 4, o))
    return out


def test_prediction_follows_the_engine_rules(sessions):
    s = Synth(sessions, alphabet.builtin().words, token_scale=1 / 32)
    first = [0, 0]  # the same prompt twice: all its full blocks hit, but the last token is computed again
    served, recs, _ = as_served(served_records(s, first), s, overhead=1, block_size=16)
    p = predict(served, ServerModel("lru", (("gpu", 10_000),), 16)).sum(axis=1)
    n = int(served.input_tokens[0])
    assert p[0] == 0 and p[1] == min(n // 16 * 16, n - 1)
    assert [r.turn for r in recs] == [0, 1]
    other = int(np.flatnonzero(sessions.session == 1)[0])
    served, _, _ = as_served(served_records(s, [0, other, 0]), s, overhead=1, block_size=16)
    room = -(-int(served.input_tokens.max()) // 16) + 1  # one prompt and its reply at a time
    big = predict(served, ServerModel("lru", (("gpu", 10_000),), 16)).sum(axis=1)
    small, below = predict(served, ServerModel("lru", (("gpu", room),), 16)).T[0], predict(
        served, ServerModel("lru", (("gpu", room), ("dram", 10_000)), 16))
    order = np.argsort(served.time)
    assert big[order][2] > 0 and small[order][2] < big[order][2] / 2  # the other session evicted most of it
    assert below[order][2].sum() == big[order][2] and below[order][2][1] > 0  # ... to host memory, found there


def test_capacity_from_metrics():
    assert kv_blocks_from_metrics('# HELP x\nagentkv_kv_blocks_total{tier="dram"} 400.0\n'
                                  'agentkv_kv_blocks_total{tier="gpu"} 91.0\n') == ({"gpu": 91, "dram": 400}, None)
    vllm = 'vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="2048"} 1.0'
    assert kv_blocks_from_metrics(vllm) == ({"gpu": 2048}, 16)
    assert kv_blocks_from_metrics("up 1") is None


def test_a_reply_that_writes_the_next_prompts_words_is_a_hit(sessions):
    """The server names the block a reply completes by its content; a next prompt that happens to repeat the
    reply's tokens there hits it. Known token ids (return_token_ids) let the prediction see that too."""
    s = Synth(sessions, alphabet.builtin().words, token_scale=1 / 32)
    first, second = (int(i) for i in np.flatnonzero(sessions.session == 0)[:2])
    p0, p1 = s.prompt_words(first), s.prompt_words(second)
    n0 = len(p0) + 1  # with the server's one head token
    assert lcp(p0, p1) == len(p0) and n0 % 16 and len(p1) + 1 > n0 // 16 * 16 + 16  # extends past the partial block
    recs = served_records(s, [first, second])
    reply = p1[len(p0) : len(p0) + 4].tolist()  # the very words the next prompt continues with
    recs[0].outcome.token_ids = [1000 + w for w in reply]
    words = {1000 + w: w for w in range(len(s.words))}  # token id -> word, as calibration learns it
    server = ServerModel("lru", (("gpu", 10_000),), 16)

    def cached(token_words: dict[int, int] | None) -> int:
        served, _, replies = as_served(recs, s, 1, 16, token_words)
        return int(predict(served, server, replies)[1, 0])

    filled = (n0 + 3) // 16 * 16  # four reply tokens, three written (the last is sampled only)
    assert filled > n0 // 16 * 16  # ... and they complete the prompt's partial block
    assert cached(None) == n0 // 16 * 16 and cached(words) == filled
    recs[0].outcome.token_ids = [1000 + (w + 1) % len(s.words) for w in reply]  # other words: no hit
    assert cached(words) == n0 // 16 * 16
