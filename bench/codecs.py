"""KV codec throughput: encoding new K/V into pages and decoding pages back, in GB/s of bf16 KV, against a
plain copy of the same bf16 tensor measured in the same run.

    python -m bench.codecs [--tokens 8192] [--device cpu|cuda] [--threads 1]

One layer's K of Llama-3.1-8B (8 KV heads × 128 dims) for `--tokens` tokens, in pages of 16 tokens placed in
a shuffled order (as a pool hands them out). encode: `encode_into` at every token's slot (a prefill's write);
decode: `decode` of every page into bf16 (what the torch reference reads per layer and step). These are the
torch reference codecs; fused GPU kernels decode in registers instead (agentkv/kernels).
"""

from __future__ import annotations

import argparse

import torch

from agentkv.codecs import get_codec
from agentkv.evaluate.codecs import pages_for
from bench._common import best_of, machine

CODECS = ["bf16", "fp8", "int8", "int4", "int4-g32", "int4-kivi"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (the machine may be shared)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev, bs, heads, dim = torch.device(args.device), 16, 8, 128
    x = torch.randn(args.tokens, heads, dim, device=dev).to(torch.bfloat16)
    pages = args.tokens // bs
    order = torch.randperm(pages, device=dev)
    slots = (order[:, None] * bs + torch.arange(bs, device=dev)).flatten()
    gb = x.numel() * 2 / 1e9

    def timed(fn) -> float:
        def run():
            fn()
            sync(dev)
        run()  # warm up
        return gb / best_of(run, args.repeat)[0]

    dst = torch.empty_like(x)
    copy = timed(lambda: dst.copy_(x))
    where = f"{args.device}" + (f" ({torch.cuda.get_device_name()})" if dev.type == "cuda" else
                                f", {args.threads} thread(s); {machine()}")
    print(f"{args.tokens} tokens × {heads} heads × {dim} dims of bf16 K ({gb * 1e3:.1f} MB) on {where}")
    print(f"plain bf16 copy: {copy:.2f} GB/s")
    print(f"{'codec':10s} {'encode GB/s':>12s} {'× copy':>7s} {'decode GB/s':>12s} {'× copy':>7s}")
    for name in CODECS:
        c = get_codec(name)
        kv = pages_for(c, args.tokens, bs, heads, dim, dev)
        enc = timed(lambda c=c, kv=kv: c.encode_into(kv.k, slots, x))
        dec = timed(lambda c=c, kv=kv: c.decode(kv.k, order, torch.bfloat16))
        print(f"{name:10s} {enc:12.2f} {enc / copy:7.2f} {dec:12.2f} {dec / copy:7.2f}")


if __name__ == "__main__":
    main()
