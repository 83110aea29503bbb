"""The words replayed prompts are written in: each is one token, alone and in a space-separated run.

Block structure survives the trip through a server's tokenizer only if the text's tokens are known exactly, so
prompts are runs of words that every common tokenizer (byte-level BPE, SentencePiece, WordPiece, word-level)
maps one word to one token. With the model's `tokenizer.json` the list is checked word by word and extended
from the vocabulary; the server itself is then asked to agree (see `calibrate`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_WORDS = 512  # enough that two different blocks of even 2 tokens collide with odds of 1 in 262,144

_COMMON = """
the of and to in is it that for on with as was at by be this from or are an but not have had has they you we
his her she he which one all were their there been if more when will would who so no can out up about what
them some my time other into only its new then also two may first any like now over such our man me even most
made after well do these many before must through back years where much your way down should because each just
those people how too little state good very make world still own see men work long get here between both life
being under never day same another know while last might us great old year off come since against go came right
used take three himself few house use during without again place around however home small found thought went
say part once general high upon school every does got left number course war until always away something fact
though water less public put think almost hand enough far took head yet government system better set told
nothing night end why called find going look asked later knew point next program city business give group
toward young days let room president side social given present several order national possible rather second
face per among form important often things looking early white case become large big need four within felt
along children saw best church ever least power development light thing seemed family interest want members
mind country area others done turned although open problem certain kind different thus began whole law line
door idea free human fire book tool code file read write test run build fix bug agent model cache block token
"""
BUILTIN = tuple(dict.fromkeys(_COMMON.split()))

WORD = re.compile(r"[a-z]{2,12}")


@dataclass(slots=True, frozen=True)
class Alphabet:
    words: tuple[str, ...]
    source: str  # where the list came from and how it was checked

    def __post_init__(self) -> None:
        if len(self.words) < 16:
            raise ValueError(f"replay alphabet: only {len(self.words)} single-token words ({self.source}); "
                             "need at least 16 (is the tokenizer word-level with a tiny vocabulary?)")


def builtin() -> Alphabet:
    return Alphabet(BUILTIN[:MAX_WORDS], "built-in English words")


def from_tokenizer(path: str) -> Alphabet:
    """Words that `path` (a tokenizer.json, or a model folder holding one) encodes as one token at the start of a
    text and one token of their own after a space; built-in words first, then the vocabulary's own."""
    import os

    from tokenizers import Tokenizer

    file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise FileNotFoundError(f"{file}: no tokenizer.json")
    tok = Tokenizer.from_file(file)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    decoded = (tok.decode([i]).strip().lower() for _, i in vocab)
    candidates = list(dict.fromkeys([*BUILTIN, *(w for w in decoded if WORD.fullmatch(w))]))
    alone = tok.encode_batch(candidates, add_special_tokens=False)
    spaced = tok.encode_batch([" " + w for w in candidates], add_special_tokens=False)
    by_token: dict[int, str] = {}  # one word per token: a word-level vocabulary maps every unknown word to one
    for w, a, s in zip(candidates, alone, spaced, strict=True):
        if len(a.ids) == 1 and len(s.ids) == 1 and s.ids[0] not in by_token:
            by_token[s.ids[0]] = w
    words = list(by_token.values())[:MAX_WORDS]
    n = len(tok.encode(" ".join(words), add_special_tokens=False).ids)
    if n != len(words):
        raise ValueError(f"{file}: {len(words)} single-token words make {n} tokens together: the tokenizer merges "
                         "across spaces, so replayed block boundaries cannot be kept")
    return Alphabet(tuple(words), f"{len(words)} single-token words of {file}")
