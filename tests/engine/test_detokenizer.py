"""The engine's one incremental detokenizer, over a real byte-level BPE (multi-byte characters split across
tokens): its pieces add up to the whole decode, and a stop string, however the tokens split it, ends the
text before it and is never shown, not even in part."""

from __future__ import annotations

import pytest

from agentkv.engine.detokenizer import Detokenizer
from agentkv.engine.tokenizer import Tokenizer
from tests.engine.conftest import write_chat_checkpoint

TEXT = "naïve café → ✓ 日本語: the agent reads a file, then STOP here and more after"


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    return Tokenizer(str(write_chat_checkpoint(tmp_path_factory.mktemp("bpe"), "{{ messages }}")))


def _stream(tok: Tokenizer, ids: list[int], stops: tuple[str, ...]) -> tuple[Detokenizer, list[str]]:
    det, pieces = Detokenizer(tok, stops), []
    for t in ids:
        done = det.push(t) is not None
        pieces.append(det.take(finished=done))
        if done:
            break
    return det, pieces


def test_the_pieces_add_up_to_the_whole_decode(tok):
    ids = tok.encode(TEXT, False)
    assert any(tok.decode([t]).endswith("\ufffd") for t in ids), "the text must split a character across tokens"
    det, pieces = _stream(tok, ids, ())
    assert "".join(pieces) == det.text == tok.decode(ids) == TEXT and det.matched is None
    assert "\ufffd" not in "".join(pieces)


@pytest.mark.parametrize("stop", ["STOP here", "P h", "日本"])
def test_a_stop_string_ends_the_text_before_it_and_is_never_shown(tok, stop):
    ids = tok.encode(TEXT, False)
    det, pieces = _stream(tok, ids, (stop, "never occurs"))
    assert det.matched == stop and det.text == TEXT[: TEXT.index(stop)]
    assert "".join(pieces) == det.text  # the stream showed exactly the final text, in order
    assert len(pieces) < len(ids)  # it ended at the token that completed the stop string


def test_while_running_it_holds_back_what_may_begin_a_stop_string(tok):
    det = Detokenizer(tok, ("STOP here",))
    shown = ""
    for t in tok.encode("the agent reads STOP", False):
        det.push(t)
        shown += det.take()
    assert "S" not in shown and det.text.endswith("STOP")  # "STOP" may still become "STOP here"
    assert shown + det.take(finished=True) == "the agent reads STOP"


class _Counting:
    """The real tokenizer, recording how many ids each decode is given: the window the detokenizer reads."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok, self.sizes = tok, []

    def decode(self, ids: list[int]) -> str:
        self.sizes.append(len(ids))
        return self.tok.decode(ids)


def test_a_stop_string_after_128k_tokens_is_found_reading_a_constant_window(tok):
    """Issue 32: the reply was decoded and searched whole on every token (18 ms a token at 128k). Now each
    token decodes a window of a few ids and searches only its new piece and the `hold` characters before it,
    so at 131,072 tokens the stop string, split across tokens, is found having read no more than at the
    start."""
    head = tok.encode("naïve café → ✓ 日本語: the agent reads a file, ", False)
    tail, stop = tok.encode("then STOP here and more after", False), "STOP here"
    assert len(tok.encode(stop, False)) >= 2, "the stop string must span tokens"
    ids = head * (131_072 // len(head)) + tail
    counting = _Counting(tok)
    det, searched = Detokenizer(counting, (stop, "</answer>")), []
    for t in ids:
        done = det.push(t) is not None
        searched.append(len(det.held))  # what the search read: this token's piece and the hold before it
        det.take(finished=done)
        if done:
            break
    assert det.matched == stop and len(det.ids) > 131_000
    assert det.text == tok.decode(ids[: len(head) * (131_072 // len(head))]) + "then "
    assert max(counting.sizes) <= 8, "each token decodes a window of a few ids, never the reply"
    assert max(searched) <= det.hold + 16, "the search reads the new piece and the hold, never the reply"
