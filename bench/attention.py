"""Triton paged attention on a GPU, against the hardware and the field, in one run.

- Decode (Llama-3.1-8B's attention: 32 heads, 8 KV heads, head dim 128, 16-token pages scattered over the
  pool): 8k to 128k contexts, batch 1 to 64, as a share of the device-to-device copy bandwidth measured in
  this run (goal ≥ 85% for bf16). Bytes are what the kernel must read: every context token's K and V as stored.
- Quantized pages at 128k: time against bf16 at the same shape (goal: int4 ≥ 3× faster).
- Prefill: TFLOP/s (causal, unmasked half counted) against torch's scaled_dot_product_attention with the
  flash backend on dense tensors, and FlexAttention (compiled, causal block mask), same shapes (goal ≥ 1.0×).
- Launch settings: tile sizes, warps and pipeline stages swept around the defaults at three decode shapes
  and one prefill shape, so the first run on a new GPU says which to keep.

Run: .venv/bin/python -m bench.attention [--quick]
Without CUDA it says so, compiles the kernels for an H100 (sm_90) ahead of time and reports their registers,
spills and shared memory, runs a tiny check of the kernels in Triton's interpreter, and exits 0.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import subprocess
import sys

import torch

from bench._common import machine

HEADS, KV_HEADS, DIM, BLOCK = 32, 8, 128, 16
CONTEXTS = (8192, 32768, 131072)
BATCHES = (1, 8, 32, 64)
QUANT = ("fp8", "int8", "int4")
PREFILL = ((1, 4096, 0), (1, 16384, 0), (8, 2048, 0), (1, 2048, 30720))  # (sequences, new tokens, cached)


def pages(codec_name: str, num_pages: int, device, kv_heads: int = KV_HEADS, dim: int = DIM, block: int = BLOCK):
    """One layer's K/V pages of `codec_name`, filled through the codec (in chunks) with N(0, 1) values."""
    from agentkv.codecs import get_codec
    from agentkv.kernels.attention import LayerKV

    codec = get_codec(codec_name)
    fields = codec.fields(block, kv_heads, dim)
    kv = LayerKV(codec, *({f.name: torch.zeros(num_pages, *f.shape, dtype=f.dtype, device=device) for f in fields}
                          for _ in range(2)))
    step = max(block, (1 << 16) // block * block)
    for a in range(0, num_pages * block, step):
        slots = torch.arange(a, min(a + step, num_pages * block), device=device)
        for side in (kv.k, kv.v):
            codec.encode_into(side, slots, torch.randn(len(slots), kv_heads, dim, device=device, dtype=torch.bfloat16))
    return kv, 2 * sum(f.nbytes for f in fields) / block  # bytes of K and V per token


def batch_meta(backend, lens: list[int], q_lens: list[int], num_prefills: int, num_pages: int, block: int, device,
               seed: int = 0):
    """Metadata for sequences whose pages are a random scatter of the pool (as after hours of serving)."""
    from agentkv.kernels.attention import SeqSlice

    need = [math.ceil(n / block) for n in lens]
    perm = random.Random(seed).sample(range(num_pages), sum(need))
    seqs, at = [], 0
    for row, (n, q, p) in enumerate(zip(lens, q_lens, need, strict=True)):
        seqs.append(SeqSlice(row, perm[at : at + p], q, n))
        at += p
    backend.bind(len(seqs), max(need), device)
    return backend.prepare(seqs, num_prefills, block)


def causal_flops(q_lens: list[int], lens: list[int], heads: int = HEADS, dim: int = DIM) -> float:
    """QK^T and PV FLOPs over the visible (query, key) pairs only."""
    pairs = sum(q * (n - q) + q * (q + 1) / 2 for q, n in zip(q_lens, lens, strict=True))
    return 4 * heads * dim * pairs


def graph_seconds(fns: list, reps: int = 20) -> float:
    """Seconds per call of `fns` captured back to back in one CUDA graph (launch cost amortized, as in the
    engine's captured decode step), averaged over `reps` replays."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for f in fns:
            f()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for f in fns:
            f()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e-3 / (reps * len(fns))


def copy_bandwidth(device) -> float:
    """Device-to-device copy, bytes read plus bytes written per second: the roof for a streaming kernel."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / graph_seconds([lambda: dst.copy_(src)])


def decode_rows(device, copy_bw: float, quick: bool) -> dict[tuple[int, int], float]:
    """Prints the decode table; returns bf16 decode time (us) by (context, batch)."""
    print(f"\nDecode, {HEADS} heads / {KV_HEADS} KV heads x {DIM}, pages of {BLOCK}; copy bandwidth "
          f"{copy_bw / 1e9:,.0f} GB/s")
    print(f"{'codec':>6} {'context':>8} {'batch':>5} {'splits':>6} {'time us':>9} {'GB/s':>8} {'% copy':>7} "
          f"{'vs bf16':>8}")
    bf16_us: dict[tuple[int, int], float] = {}
    plan = {"bf16": [(c, b) for c in CONTEXTS for b in BATCHES]}
    plan.update({q: [(CONTEXTS[-1], b) for b in (1, 8)] for q in QUANT})
    for codec_name, shapes in plan.items():
        _decode_codec(device, codec_name, [(c, b) for c, b in shapes if not quick or b in (1, 8)], copy_bw, bf16_us)
    return bf16_us


def _decode_codec(device, codec_name: str, shapes: list[tuple[int, int]], copy_bw: float,
                  bf16_us: dict[tuple[int, int], float]) -> None:
    from agentkv.kernels.page_layout import kernel_pages

    try:
        kv, token_bytes = pages(codec_name, _fit(codec_name, max(c * b for c, b in shapes), device), device)
        kernel_pages(kv.codec, kv.k)
    except (ValueError, NotImplementedError) as e:  # a codec the engine (or the kernels) lack
        print(f"{codec_name:>6} skipped: {e}")
        return
    num_pages = kv.k["data"].shape[0]
    for ctx, batch in shapes:
        if batch * math.ceil(ctx / BLOCK) > num_pages:
            print(f"{codec_name:>6} {ctx:>8} {batch:>5} skipped: {batch} x {ctx} tokens do not fit in memory")
            continue
        secs, splits = decode_seconds(kv, token_bytes, ctx, batch, device)
        us, gbs = secs * 1e6, batch * ctx * token_bytes / secs
        if codec_name == "bf16":
            bf16_us[(ctx, batch)] = us
        base = bf16_us.get((ctx, batch))
        vs = f"{base / us:7.2f}x" if base and codec_name != "bf16" else ""
        print(f"{codec_name:>6} {ctx:>8} {batch:>5} {splits:>6} {us:>9.1f} {gbs / 1e9:>8,.0f} "
              f"{100 * gbs / copy_bw:>6.1f}% {vs:>8}")


def decode_seconds(kv, token_bytes: float, ctx: int, batch: int, device, config: dict | None = None,
                   ) -> tuple[float, int]:
    """Seconds per decode-attention call over `batch` contexts of `ctx` tokens, and its split count. Several
    independent batches (own pages, own queries) go in one graph, so that a replay reads at least 4x the L2
    cache: every figure measures HBM, as a model's many layers do."""
    from agentkv.kernels.triton_attention import TritonAttention, num_splits

    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20)
    copies = max(1, min(8, math.ceil(4 * l2 / (batch * ctx * token_bytes))))
    calls = []
    for c in range(copies):
        backend = TritonAttention()
        backend.decode = dict(config or backend.decode)
        meta = batch_meta(backend, [ctx] * batch, [1] * batch, 0, kv.k["data"].shape[0], BLOCK, device, seed=c)
        q = torch.randn(batch, HEADS, DIM, device=device, dtype=torch.bfloat16)
        calls.append(lambda b=backend, q=q, m=meta: b.attend(q, kv, m, DIM**-0.5))
    return graph_seconds(calls), num_splits(batch, KV_HEADS, ctx, backend.decode["BLOCK_N"], backend.sms)


DECODE_SWEEP = [dict(BLOCK_N=n, num_warps=w, num_stages=s) for n in (32, 64, 128) for w in (4, 8) for s in (2, 3, 4)]
PREFILL_SWEEP = [dict(BLOCK_M=m, BLOCK_N=n, num_warps=w, num_stages=s)
                 for m in (64, 128) for n in (32, 64, 128) for w in (4, 8) for s in (2, 3)]


def sweep_rows(device, copy_bw: float) -> None:
    """The launch settings tried around the defaults (TritonAttention.__init__), so one run on a new GPU says
    which to keep."""
    from triton.testing import do_bench

    from agentkv.kernels.triton_attention import TritonAttention

    print("\nLaunch settings: the default against the best of a sweep")
    for codec_name, ctx, batch in (("bf16", 131072, 1), ("bf16", 32768, 32), ("int4", 131072, 1)):
        kv, token_bytes = pages(codec_name, _fit(codec_name, ctx * batch, device), device)
        share = {}
        for cfg in [None, *DECODE_SWEEP]:
            try:
                share[str(cfg)] = batch * ctx * token_bytes / decode_seconds(kv, token_bytes, ctx, batch, device,
                                                                              cfg)[0] / copy_bw
            except Exception as e:  # a setting this GPU cannot run (shared memory, registers)
                print(f"  decode {cfg}: {type(e).__name__}")
        best = max(share, key=share.__getitem__)
        print(f"  decode {codec_name} {ctx} x {batch}: default {100 * share['None']:.1f}% of copy; "
              f"best {100 * share[best]:.1f}% with {best}")
        del kv
    seqs, new = 1, 8192
    kv, _ = pages("bf16", seqs * new // BLOCK + 8, device)
    q = torch.randn(seqs * new, HEADS, DIM, device=device, dtype=torch.bfloat16)
    tflops = {}
    for cfg in [None, *PREFILL_SWEEP]:
        backend = TritonAttention()
        backend.prefill = dict(cfg or backend.prefill)
        meta = batch_meta(backend, [new] * seqs, [new] * seqs, seqs, kv.k["data"].shape[0], BLOCK, device)
        try:
            ms = do_bench(lambda b=backend, m=meta: b.attend(q, kv, m, DIM**-0.5))
        except Exception as e:
            print(f"  prefill {cfg}: {type(e).__name__}")
            continue
        tflops[str(cfg)] = causal_flops([new] * seqs, [new] * seqs) / ms / 1e9
    best = max(tflops, key=tflops.__getitem__)
    print(f"  prefill {seqs} x {new}: default {tflops['None']:.0f} TFLOP/s; best {tflops[best]:.0f} with {best}")


def _fit(codec_name: str, tokens: int, device) -> int:
    """Pages for `tokens` (plus a few), or as many as 80% of free memory holds (bf16-sized bound)."""
    per_page = 2 * BLOCK * KV_HEADS * DIM * (2 if codec_name == "bf16" else 1)
    return min(math.ceil(tokens / BLOCK) + 8, int(0.8 * torch.cuda.mem_get_info(device)[0] / per_page))


def prefill_rows(device, quick: bool) -> dict[str, float]:
    """Prints the prefill table; returns our TFLOP/s by shape label."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    from triton.testing import do_bench

    from agentkv.kernels.triton_attention import TritonAttention

    flex = torch.compile(flex_attention, dynamic=False)
    ours_tflops: dict[str, float] = {}
    print(f"\nPrefill (causal), bf16, {HEADS} heads / {KV_HEADS} KV heads x {DIM}: TFLOP/s")
    print(f"{'seqs x new (+cached)':>22} {'ours':>7} {'SDPA flash':>11} {'Flex':>7} {'ours/SDPA':>10} "
          f"{'max |ours-SDPA|':>16}")
    for seqs, new, cached in PREFILL[:2] if quick else PREFILL:
        lens, q_lens = [cached + new] * seqs, [new] * seqs
        kv, _ = pages("bf16", seqs * math.ceil((cached + new) / BLOCK) + 8, device)
        backend = TritonAttention()
        meta = batch_meta(backend, lens, q_lens, seqs, kv.k["data"].shape[0], BLOCK, device)
        q = torch.randn(seqs * new, HEADS, DIM, device=device, dtype=torch.bfloat16)
        flops = causal_flops(q_lens, lens)
        ours = do_bench(lambda: backend.attend(q, kv, meta, DIM**-0.5))  # noqa: B023
        label = f"{seqs} x {new}" + (f" (+{cached})" if cached else "")
        ours_tflops[label] = flops / ours / 1e9
        if cached:  # dense baselines have no paged prefix: ours alone
            print(f"{label:>22} {flops / ours / 1e9:>7.0f} {'-':>11} {'-':>7} {'-':>10} {'-':>16}")
            continue
        # the same K/V, gathered dense: [seqs, heads, new, dim] (KV heads repeated for the flash kernel)
        tables = meta.block_tables.long()
        dense = [kv.codec.decode(side, tables.reshape(-1), torch.bfloat16).view(seqs, -1, KV_HEADS, DIM)[:, :new]
                 for side in (kv.k, kv.v)]
        k, v = (x.repeat_interleave(HEADS // KV_HEADS, dim=2).transpose(1, 2).contiguous() for x in dense)
        qd = q.view(seqs, new, HEADS, DIM).transpose(1, 2).contiguous()
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            sdpa = do_bench(lambda: F.scaled_dot_product_attention(qd, k, v, is_causal=True))  # noqa: B023
            ref = F.scaled_dot_product_attention(qd, k, v, is_causal=True)
        mask = create_block_mask(lambda b, h, i, j: i >= j, seqs, None, new, new, device=device)
        fl = do_bench(lambda: flex(qd, k, v, block_mask=mask))  # noqa: B023
        err = (backend.attend(q, kv, meta, DIM**-0.5).view(seqs, new, HEADS, DIM).transpose(1, 2) - ref).abs().max()
        print(f"{label:>22} {flops / ours / 1e9:>7.0f} {flops / sdpa / 1e9:>11.0f} {flops / fl / 1e9:>7.0f} "
              f"{sdpa / ours:>9.2f}x {err.item():>16.2e}")
    return ours_tflops


CATALOG_GPUS = {"H100": "h100-sxm", "H200": "h200", "B200": "b200", "MI300X": "mi300x"}


def simulator_rows(device, copy_bw: float, decode_us: dict[tuple[int, int], float], prefill: dict[str, float],
                   ) -> None:
    """The simulator's step-cost coefficients beside what this run measured, on the catalog entry of this GPU."""
    from agentkv.catalog import hardware
    from agentkv.sim.stepcost import Coefficients

    name = torch.cuda.get_device_name(device)
    entry = next((v for k, v in CATALOG_GPUS.items() if k in name.upper()), None)
    if entry is None or not decode_us or not prefill:
        print(f"\nSimulator coefficients: no catalog entry for '{name}' (or nothing measured): not compared")
        return
    hw, c = hardware(entry), Coefficients()
    token_bytes = 2 * KV_HEADS * DIM * 2
    long = {k: us for k, us in decode_us.items() if k[0] >= 32768} or decode_us
    hbm = max(ctx * batch * token_bytes / (us * 1e-6) for (ctx, batch), us in long.items()) / hw.hbm_bw
    attn = max(prefill.values()) * 1e12 / hw.bf16_flops
    print(f"\nSimulator coefficients (agentkv/sim/stepcost.py) against this run, catalog '{entry}' "
          f"(HBM {hw.hbm_bw / 1e12:.2f} TB/s, bf16 {hw.bf16_flops / 1e12:.0f} TFLOP/s):")
    print(f"  hbm_efficiency        {c.hbm_efficiency:.2f}   measured {hbm:.2f} (bf16 decode, best row >= 32k); "
          f"copy {copy_bw / hw.hbm_bw:.2f}")
    print(f"  attention_efficiency  {c.attention_efficiency:.2f}   measured {attn:.2f} (best prefill row)")
    for what, model, got in (("hbm_efficiency", c.hbm_efficiency, hbm), ("attention_efficiency",
                                                                         c.attention_efficiency, attn)):
        if abs(got - model) > 0.2 * model:
            print(f"  -> {what} disagrees by more than 20%: set it to {got:.2f} in Coefficients")


SM90_CASES = (  # (kernel, page dtype, quant, group, warps) as the GPU path launches them for Llama-3.1-8B
    ("prefill", "bf16", 0, 1, 8), ("decode", "bf16", 0, 1, 4), ("decode", "fp8e4nv", 1, DIM, 4),
    ("decode", "i8", 1, DIM, 4), ("decode", "u8", 2, DIM, 4), ("decode", "u8", 2, 32, 4))


def compile_sm90(kernel: str, page: str, quant: int, group: int, warps: int) -> dict[str, object]:
    """Compile a kernel ahead of time for an H100 (sm_90) with Triton's bundled ptxas, no GPU needed, and read
    its resources: registers, spilled stack bytes, and whether it uses wgmma / mma and cp.async pipelining."""
    import tempfile

    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from agentkv.kernels import triton_kernels

    fn = triton_kernels.prefill_kernel if kernel == "prefill" else triton_kernels.decode_kernel
    scale_t = "*fp16" if quant else "*bf16"
    types = dict(q="*bf16", o="*bf16", part_o="*fp32", part_lse="*fp32", block_tables="*i32", query_start="*i32",
                 seq_lens="*i32", k=f"*{page}", v=f"*{page}", ks=scale_t, vs=scale_t, kz=scale_t, vz=scale_t,
                 sm_scale="fp32", sinks="*fp32")
    consts = dict(G=4, BS=BLOCK, D=DIM, BLOCK_D=DIM, BLOCK_N=64, DOT=tl.bfloat16, K_QUANT=quant, V_QUANT=quant,
                  K_GROUP=group, V_GROUP=group, H=HEADS, BLOCK_G=16, SPLITS=8, BLOCK_M=128, WINDOW=0, CHUNK=0,
                  SINKS=False)  # full causal attention: the Llama shapes this reports on
    names = fn.arg_names
    sig = {n: "constexpr" if n in consts else types.get(n, "i32") for n in names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)  # as the JIT specializes strides
             if sig[n] != "constexpr" and n not in ("sm_scale", "first_row")}
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(n),): consts[n] for n in names if n in consts},
                    attrs=attrs)
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=3))
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(k.asm["cubin"])
        f.flush()
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        res = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    ptx = k.asm["ptx"]
    return dict(registers=int(res.split("REG:")[1].split()[0]), stack=int(res.split("STACK:")[1].split()[0]),
                shared=k.metadata.shared, pipelined="cp.async" in ptx,
                mma="wgmma" if "wgmma" in ptx else "mma.sync" if "mma.sync" in ptx else "none")


def sm90_report() -> None:
    print("\nCompiled ahead of time for sm_90 (H100), Llama-3.1-8B shapes: resources per kernel")
    print(f"{'kernel':>8} {'pages':>8} {'group':>5} {'regs':>5} {'spill B':>7} {'smem KiB':>8} {'mma':>8} {'cp.async':>8}")
    for kernel, page, quant, group, warps in SM90_CASES:
        r = compile_sm90(kernel, page, quant, group, warps)
        print(f"{kernel:>8} {page:>8} {group:>5} {r['registers']:>5} {r['stack']:>7} {r['shared'] / 1024:>8.0f} "
              f"{r['mma']:>8} {'yes' if r['pipelined'] else 'no':>8}")


def smoke() -> int:
    """No GPU: the kernels run once, tiny, in Triton's interpreter, against the torch reference."""
    os.environ["TRITON_INTERPRET"] = "1"
    from agentkv.kernels.attention import TorchAttention
    from agentkv.kernels.triton_attention import TritonAttention

    kv, _ = pages("fp32", 16, "cpu", kv_heads=2, dim=16, block=4)
    lens, q_lens = [11, 21, 3], [11, 1, 1]
    q, k, v = torch.randn(13, 4, 16), torch.randn(13, 2, 16), torch.randn(13, 2, 16)
    outs = []
    for backend in (TritonAttention(), TorchAttention()):  # both write the same k/v, then attend
        outs.append(backend.forward(q, k, v, kv, batch_meta(backend, lens, q_lens, 1, 16, 4, torch.device("cpu")), 0.25))
    err = (outs[0] - outs[1]).abs().max().item()
    print(f"interpreter smoke check (prefill 11 + 2 decodes, GQA 2, fp32): max |triton - torch| = {err:.1e}")
    return 0 if err < 1e-4 else 1


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a few shapes only, no sweep of launch settings")
    ap.add_argument("--sm90", action="store_true", help="only compile the kernels for an H100 and report resources")
    args = ap.parse_args()
    print(f"machine: {machine()}")
    if args.sm90:
        sm90_report()
        return 0
    if not torch.cuda.is_available():
        print("bench.attention measures GPU kernels and needs CUDA; this machine has none (nothing measured).")
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # compiled kernels, in a child
        sm90 = subprocess.run([sys.executable, "-m", "bench.attention", "--sm90"], env=env, capture_output=True,
                              text=True)
        print(sm90.stdout.split("\n", 1)[1] if sm90.returncode == 0 else f"sm_90 compile failed:\n{sm90.stderr}")
        return smoke()
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    copy_bw = copy_bandwidth(device)
    decode_us = decode_rows(device, copy_bw, args.quick)
    prefill = prefill_rows(device, args.quick)
    simulator_rows(device, copy_bw, decode_us, prefill)
    if not args.quick:
        sweep_rows(device, copy_bw)
    return 0


if __name__ == "__main__":
    sys.exit(main())
