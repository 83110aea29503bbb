"""Train a tiny Llama-layout model on the Python standard library's sources, so KV-quantization accuracy can be
measured here on trained weights (random weights say nothing about it).

    python -m bench.train_tiny --out models/tiny-stdlib [--minutes 6] [--threads 1]

Writes a Hugging Face checkpoint (config.json, model.safetensors, tokenizer.json, tokenizer_config.json) that
`agentkv.model.loader`, `LLM` and `agentkv kv-eval` load. A byte-level BPE tokenizer is trained on the same
text first. The held-out modules (agentkv.codecs.corpus) are never trained on: kv-eval measures on them.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from agentkv.codecs.corpus import stdlib_text

SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>"]


def train_tokenizer(text: str, vocab: int, out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(text.split("\n\n"), trainer)
    tok.post_processor = processors.TemplateProcessing(single=f"{SPECIAL[0]} $A", special_tokens=[(SPECIAL[0], 0)])
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"bos_token": SPECIAL[0], "eos_token": SPECIAL[1]}))


def build_model(vocab: int, context: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                      num_attention_heads=3, num_key_value_heads=1, max_position_embeddings=context,
                      rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1)
    return LlamaForCausalLM(cfg)


def batches(ids: torch.Tensor, batch: int, seq: int, gen: torch.Generator):
    while True:
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=gen)
        yield torch.stack([ids[s : s + seq + 1] for s in starts.tolist()])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="models/tiny-stdlib")
    ap.add_argument("--minutes", type=float, default=6.0, help="training time budget")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (the machine may be shared)")
    ap.add_argument("--vocab", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--chars", type=int, default=6_000_000, help="training text, in characters")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = stdlib_text("train", args.chars)
    t0 = time.time()
    train_tokenizer(text[:4_000_000], args.vocab, out)
    from tokenizers import Tokenizer

    ids = torch.tensor(Tokenizer.from_file(str(out / "tokenizer.json")).encode(text).ids)
    print(f"tokenizer: {args.vocab} tokens, {len(text) / 1e6:.1f} M chars → {len(ids) / 1e6:.2f} M tokens "
          f"({time.time() - t0:.0f} s)", flush=True)
    model = build_model(args.vocab, args.seq * 2)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(0)
    budget, start, step, seen = args.minutes * 60, time.time(), 0, 0
    for batch in batches(ids, args.batch, args.seq, gen):
        frac = (time.time() - start) / budget
        if frac >= 1:
            break
        for g in opt.param_groups:  # warm up for 30 steps, then cosine over the time budget
            g["lr"] = args.lr * min(1.0, (step + 1) / 30) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        loss = model(input_ids=batch[:, :-1], labels=batch[:, :-1].clone()).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step, seen = step + 1, seen + batch[:, :-1].numel()
        if step % 25 == 0:
            print(f"step {step}  loss {loss.item():.3f}  {seen / (time.time() - start):.0f} tokens/s", flush=True)
    model.eval().save_pretrained(str(out))
    print(f"{params / 1e6:.2f} M parameters, {step} steps, {seen / 1e6:.2f} M tokens in "
          f"{(time.time() - start) / 60:.1f} min, final train loss {loss.item():.3f}; wrote {out}")


if __name__ == "__main__":
    main()
