"""What a reply's text costs the engine per token, by reply length, with stop strings set: the incremental
detokenizer (`engine/detokenizer.py`, what `LLM._append` and `LLM._output` run per token) against the path
it replaced (the whole reply decoded and searched on every token) and against itself with no stop strings.
Linear means a flat cost per token: 4,000 tokens cost 4x what 1,000 do (quadratic: 16x). Timed in the
thread's CPU time: on a machine shared with other jobs, wall time of a 10 ms run measures their load.

The token ids are the first 1,000 tokens of this repository's docs, encoded by a byte-level BPE trained on
the repository (as bench/grammar_masks.py does) and repeated, so that every length is made of the same
text; the stop strings never occur in it, so every reply runs to its full length.

    python -m bench.stop_strings
"""

from __future__ import annotations

import time
from pathlib import Path

from agentkv.engine.detokenizer import Detokenizer
from agentkv.engine.tokenizer import Tokenizer
from bench._common import best_of, machine
from bench.grammar_masks import tokenizer_json

STOPS = ("</answer>", "\n\nUSER:")
LENGTHS = (1000, 2000, 4000)
LONG = 131_072  # a 128k-token reply: the incremental path run whole, the replaced one timed at its last token


def incremental(tok: Tokenizer, ids: list[int], stops: tuple[str, ...]) -> str:
    det = Detokenizer(tok, stops)
    for t in ids:
        if det.push(t) is not None:
            break
        det.take()  # what the engine's output hands its stream each step
    return det.text


def whole_each_token(tok: Tokenizer, ids: list[int], stops: tuple[str, ...]) -> str:
    """The replaced path: decode everything generated so far, search it, on every token."""
    text = ""
    for n in range(1, len(ids) + 1):
        text = tok.decode(ids[:n])
        if any(s in text for s in stops):
            break
    return text


def main() -> None:
    import tempfile

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "tokenizer.json").write_text(tokenizer_json(8192))
        tok = Tokenizer(d)
    text = "\n\n".join(p.read_text() for p in sorted(root.glob("docs/*.md")))
    ids = tok.encode(text, False)[: LENGTHS[0]] * (LONG // LENGTHS[0])
    assert incremental(tok, ids, STOPS) == tok.decode(ids), "the incremental text must equal the whole decode"
    print(f"reply text per token, µs of this thread's CPU time (best of 5, the replaced path best of 3; {machine()})")
    print(f"{'tokens':>7} {'incremental+stops':>18} {'no stops':>9} {'whole decode/token':>19}")
    per: dict[str, list[float]] = {"inc": [], "none": [], "old": []}
    for n in LENGTHS:
        part = ids[:n]
        runs = (("inc", incremental, STOPS, 5), ("none", incremental, (), 5), ("old", whole_each_token, STOPS, 3))
        for key, fn, stops, repeat in runs:
            t, _ = best_of(lambda fn=fn, stops=stops, part=part: fn(tok, part, stops), repeat, time.thread_time)
            per[key].append(t / n * 1e6)
        print(f"{n:>7} {per['inc'][-1]:>18.1f} {per['none'][-1]:>9.1f} {per['old'][-1]:>19.1f}")
    grow = LENGTHS[-1] / LENGTHS[0]
    print(f"cost of {LENGTHS[-1]} tokens / cost of {LENGTHS[0]} (linear: {grow:.0f}x, quadratic: {grow ** 2:.0f}x): "
          f"incremental with stops {per['inc'][-1] / per['inc'][0] * grow:.1f}x, "
          f"whole decode per token {per['old'][-1] / per['old'][0] * grow:.1f}x")
    print(f"at {LENGTHS[-1]} tokens: stop strings cost {per['inc'][-1] / per['none'][-1]:.2f}x no stop strings; "
          f"the replaced path cost {per['old'][-1] / per['inc'][-1]:.0f}x the incremental one")
    long_run, _ = best_of(lambda: incremental(tok, ids, STOPS), 3, time.thread_time)
    last, _ = best_of(lambda: any(s in tok.decode(ids) for s in STOPS), 3, time.thread_time)
    print(f"at {len(ids)} tokens: incremental with stops {long_run / len(ids) * 1e6:.1f} µs/token over the whole "
          f"reply; the replaced path's token at that length alone {last * 1e3:.1f} ms ({last / long_run * len(ids):.0f}x)")


if __name__ == "__main__":
    main()
