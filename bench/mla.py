"""MLA decode: the absorbed path (what the engine runs for decodes) against the unabsorbed one (what it runs for
prefill chunks), on one DeepSeek-V3-shaped attention layer over latent pages, measured in the same run.

The layer has DeepSeek-V3's per-head shape (huggingface.co/deepseek-ai/DeepSeek-V3 config.json: kv_lora_rank
512, qk_rope_head_dim 64, qk_nope_head_dim 128, v_head_dim 128, q_lora_rank 1536, hidden 7168) with `--heads`
heads (128 in the model; fewer by default so the CPU run stays short) and random weights. A batch of `--batch`
sequences, each `--context` tokens of latent pages (bf16 weights and pages on CUDA, fp32 on CPU), decodes one
token: absorbed, every head attends the shared [latent ; RoPE key] through the attention backend (W_UK folded
into the query, W_UV after); unabsorbed, each row is handed over as a one-token prefill chunk, whose context is
expanded per head by kv_b_proj (the unabsorbed path's online softmax). Best of `--repeat` alternating runs each.
Run: .venv/bin/python -m bench.mla [--heads 16] [--batch 4] [--context 1024,4096] [--repeat 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from agentkv.codecs import get_codec
from agentkv.engine.pages import PageLayout
from agentkv.kernels.attention import SeqSlice, TorchAttention
from agentkv.model.config import ModelConfig
from agentkv.model.deepseek_config import MLAShape
from agentkv.model.deepseek_v3 import MLAAttention
from agentkv.model.llama import Rotary

BS = 16


def timed(layer: MLAAttention, x, positions, rotary, kv, seqs, prefill_rows: int, repeat: int) -> float:
    """Best wall time of one decode step of the batch, its rows given as prefill chunks or as decodes."""
    best = float("inf")
    for _ in range(repeat):
        layer.backend.bind(len(seqs), seqs[0].seq_len // BS + 1, x.device)
        meta = layer.backend.prepare(seqs, prefill_rows, BS)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        layer(x, positions, rotary, kv, meta)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--context", default="1024,4096")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = ModelConfig("deepseek_v3", 7168, 18432, 1, args.heads, args.heads, 64, 129280, 1e-6, 10000.0, 163840,
                      mla=MLAShape(512, 1536, 128, 64, 128))
    torch.manual_seed(0)
    layer = MLAAttention(cfg, TorchAttention()).to(device, dtype).eval()
    rotary = Rotary.of(cfg).to(device)
    codec = get_codec("bf16" if dtype == torch.bfloat16 else "fp32")
    print(f"device {device}, {args.heads} heads, batch {args.batch}, blocks of {BS}, {codec.name} pages")
    for context in (int(c) for c in args.context.split(",")):
        pages = args.batch * -(-context // BS)
        layout = PageLayout.of_model(codec, cfg, 1, BS)
        kv = layout.views(torch.zeros(pages, layout.page_bytes, dtype=torch.uint8, device=device))[0]
        slots = torch.arange(pages * BS, device=device)
        codec.encode_into(kv.k, slots, torch.randn(pages * BS, 1, 576, device=device))
        per = pages // args.batch
        seqs = [SeqSlice(i, list(range(i * per, (i + 1) * per)), 1, context) for i in range(args.batch)]
        x = torch.randn(args.batch, 7168, device=device, dtype=dtype) * 0.1
        positions = torch.full((args.batch,), context - 1, device=device)
        with torch.no_grad():
            absorbed = timed(layer, x, positions, rotary, kv, seqs, 0, args.repeat)
            unabsorbed = timed(layer, x, positions, rotary, kv, seqs, args.batch, args.repeat)
        print(f"context {context:>6,}: absorbed {absorbed * 1e3:8.2f} ms, unabsorbed {unabsorbed * 1e3:8.2f} ms, "
              f"unabsorbed / absorbed {unabsorbed / absorbed:5.2f}x")


if __name__ == "__main__":
    main()
