"""Peak extra memory of the torch reference backend at long context, against gathering whole contexts.

One layer of Llama-3.1-8B's KV shape (8 KV heads × 128, 32 query heads, bf16 pages), 16 decodes × 32k tokens
each (2 GiB of pages). Baseline, measured in the same run: what the engine's attention did before pages were
attended chunk by chunk — every sequence's context gathered through its block table into one padded tensor,
then SDPA. Peak is read from the kernel's high-water mark of resident memory on CPU (reset between runs), or
from torch's allocator statistics on CUDA.

    python -m bench.attention_memory [--seqs 16] [--context 32768]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from agentkv.codecs import get_codec
from agentkv.engine.pages import PageLayout
from agentkv.kernels.attention import SeqSlice, TorchAttention
from bench._common import machine

KVH, H, D, BS = 8, 32, 128, 16


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:  # resets VmHWM to the current RSS
            f.write("5")


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def current_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated()
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS"))


def measure(device: torch.device, fn) -> tuple[int, float]:
    peak_reset(device)
    base = current_bytes(device)
    t = time.perf_counter()
    fn()
    secs = time.perf_counter() - t
    return peak_bytes(device) - base, secs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--context", type=int, default=32768)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n, ctx = args.seqs, args.context
    layout = PageLayout.of(get_codec("bf16"), 1, BS, KVH, D)
    per_seq = ctx // BS
    slab = torch.zeros(n * per_seq + 1, layout.page_bytes, dtype=torch.uint8, device=device)
    kv = layout.views(slab)[0]
    torch.manual_seed(0)
    kv.k["data"].normal_()
    kv.v["data"].normal_()
    tables = [list(range(1 + i * per_seq, 1 + (i + 1) * per_seq)) for i in range(n)]
    backend = TorchAttention()
    backend.bind(n, per_seq, device)
    meta = backend.prepare([SeqSlice(i, tables[i], 1, ctx) for i in range(n)], 0, BS)
    q = torch.randn(n, H, D, dtype=torch.bfloat16, device=device)
    k = torch.randn(n, KVH, D, dtype=torch.bfloat16, device=device)
    v = torch.randn_like(k)

    def gathered() -> torch.Tensor:  # the old backend: whole contexts gathered, padded, one SDPA call
        pages = meta.block_tables.long()
        kd = kv.k["data"][pages].view(n, -1, KVH, D).transpose(1, 2).to(torch.bfloat16)
        vd = kv.v["data"][pages].view(n, -1, KVH, D).transpose(1, 2).to(torch.bfloat16)
        return F.scaled_dot_product_attention(q[:, :, None], kd, vd, enable_gqa=True)[:, :, 0]

    def paged() -> torch.Tensor:
        return backend.forward(q, k, v, kv, meta, D**-0.5)

    gathered(), paged()  # warm-up
    base, base_s = measure(device, gathered)
    ours, ours_s = measure(device, paged)
    kv_bytes = n * ctx * KVH * D * 2 * 2
    print(f"machine: {machine()}; device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    print(f"{n} decodes x {ctx} tokens, one layer of Llama-3.1-8B KV shape: {kv_bytes / 2**30:.2f} GiB of pages")
    print(f"gather whole contexts (old):   peak extra {base / 2**20:9.1f} MiB  {base_s:6.2f} s")
    print(f"paged online softmax (now):    peak extra {ours / 2**20:9.1f} MiB  {ours_s:6.2f} s")
    print(f"ratio: {base / max(ours, 1):.1f}x less extra memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
