"""What a grammar costs a decode step's sampling: `sample()` over a batch of 32 rows, with no grammar, with
`matchers` given but all None (the unconstrained path the engine takes), and with 1 or all 32 rows held to
a JSON schema (llguidance computes each row's mask, the sampler applies it, the matcher consumes the token).
The tokenizer is a byte-level BPE trained on this repository (vocabulary printed); logits are that wide.

    python -m bench.grammar_masks
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from agentkv.engine.grammar import Grammars, StructuredOutputsParams
from agentkv.engine.sampler import sample
from agentkv.engine.sequence import SamplingParams
from bench._common import best_of, machine

SCHEMA = {"type": "object", "properties": {"path": {"type": "string"}, "line": {"type": "integer"},
                                           "flags": {"type": "array", "items": {"type": "boolean"}}},
          "required": ["path", "line", "flags"], "additionalProperties": False}
BATCH, STEPS = 32, 64
LOGITS: dict[int, list[torch.Tensor]] = {}  # drawn once, outside the timed runs


def tokenizer_json(vocab: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = Path(__file__).resolve().parents[1]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    files = [str(p) for p in sorted(root.glob("agentkv/**/*.py")) + sorted(root.glob("docs/*.md"))]
    tok.train(files, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|im_end|>"], show_progress=False,
                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    with tempfile.TemporaryDirectory() as d:
        tok.save(f"{d}/t.json")
        return Path(f"{d}/t.json").read_text()


def run(grammars: Grammars, vocab: int, constrained: int | None) -> None:
    """STEPS decode steps of sampling; `constrained` rows under the schema (None: no matchers argument)."""
    spec = StructuredOutputsParams(json=SCHEMA)
    params = [SamplingParams(temperature=1.0)] * BATCH
    gens = [None] * BATCH
    matchers = None if constrained is None else [grammars.matcher(spec) if i < constrained else None
                                                 for i in range(BATCH)]
    for logits in LOGITS[vocab]:
        tokens = sample(logits.clone(), params, gens, matchers)
        for m, t in zip(matchers or [], tokens, strict=False):
            if m is not None and not m.is_stopped():
                m.consume_token(t)
            elif m is not None:
                m.reset()  # a finished reply: start the next one


def main() -> None:
    text = tokenizer_json(16384)
    grammars = Grammars(text, 16384, [0])
    vocab = grammars.tokenizer.vocab_size
    g = torch.Generator().manual_seed(0)
    LOGITS[vocab] = [torch.randn(BATCH, vocab, generator=g) for _ in range(STEPS)]
    print(f"machine: {machine()}; BPE vocabulary {vocab}; batch {BATCH}; {STEPS} steps per run; best of 5")
    base, _ = best_of(lambda: run(grammars, vocab, None), 5)
    for label, k in [("no grammar (baseline)", None), ("matchers given, all None", 0), ("1 of 32 rows constrained", 1),
                     (f"all {BATCH} rows constrained", BATCH)]:
        t = base if k is None else best_of(lambda k=k: run(grammars, vocab, k), 5)[0]
        print(f"| {label} | {t / STEPS * 1e3:.3f} ms/step | {t / base:.2f}× |")


if __name__ == "__main__":
    main()
