"""The Triton paged-attention kernels against the torch reference backend, on pages laid out as the engine's
pool lays them out (strided views of one byte slab, K and V fields side by side, page order scrambled).

Shapes are tiny because the interpreter costs per element; they still cross page and tile borders (pages of 4
or 16 tokens, 16-token tiles in the interpreter), use odd lengths, every GQA ratio we serve, a head dim that is
not a power of two, splits of the decode context, and every codec the engine has.
"""

from __future__ import annotations

import math

import pytest
import torch

from agentkv.codecs import get_codec
from agentkv.kernels.attention import LayerKV, SeqSlice, TorchAttention
from agentkv.kernels.triton_attention import TritonAttention

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}  # half types: q and P rounded for the MMAs on a GPU


def layer_pages(codec_name: str, num_pages: int, block_size: int, kv_heads: int, dim: int) -> LayerKV:
    """One layer's K and V fields as views into a byte slab with a row per page (and 16 spare bytes a row, so
    page strides are not the fields' natural ones)."""
    codec = get_codec(codec_name)
    halves = (codec.key_fields(block_size, kv_heads, dim), codec.value_fields(block_size, kv_heads, dim))
    row = sum(f.nbytes for fields in halves for f in fields) + 16
    slab = torch.zeros(num_pages, row, dtype=torch.uint8, device=DEVICE)
    views: list[dict[str, torch.Tensor]] = [{}, {}]
    at = 0
    for side, fields in zip(views, halves, strict=True):
        for f in fields:
            side[f.name] = slab[:, at : at + f.nbytes].view(f.dtype).view(num_pages, *f.shape)
            at += f.nbytes
    return LayerKV(codec, views[0], views[1])


def run_batch(codec_name: str, prefills: list[tuple[int, int]], decodes: list[int], heads: int, kv_heads: int,
              dim: int = 16, block_size: int = 4, splits: int | None = None, seed: int = 0, window: int = 0,
              chunk: int = 0, sinks: bool = False):
    """prefills: (cached, new) tokens per chunk; decodes: context length (new token included) per decode.
    Cached tokens are encoded into their pages first, as earlier steps would have; then one forward (under a
    sliding window, a chunk, sinks, where given)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    dtype = DTYPES.get(codec_name, torch.float32)  # quantized pages: fp32 queries, so errors show
    lens = [c + n for c, n in prefills] + decodes
    q_lens = [n for _, n in prefills] + [1] * len(decodes)
    need = [math.ceil(n / block_size) for n in lens]
    num_pages = sum(need) + 3
    perm = torch.randperm(num_pages, generator=g).tolist()  # pages scattered over the pool
    kv = layer_pages(codec_name, num_pages, block_size, kv_heads, dim)
    seqs, at = [], 0
    for row, (n, ql, npg) in enumerate(zip(lens, q_lens, need, strict=True)):
        seqs.append(SeqSlice(row, perm[at : at + npg], ql, n))
        at += npg

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dtype).to(DEVICE)

    for s in seqs:  # the cached prefix
        cached = s.seq_len - s.q_len
        if cached:
            pos = torch.arange(cached)
            slots = (torch.tensor(s.pages)[pos // block_size] * block_size + pos % block_size).to(DEVICE)
            kv.codec.encode_into(kv.k, slots, rand(cached, kv_heads, dim))
            kv.codec.encode_into(kv.v, slots, rand(cached, kv_heads, dim))
    backend = TritonAttention()
    backend.bind(len(seqs), max(need), DEVICE)
    backend.fixed_splits = splits
    meta = backend.prepare(seqs, len(prefills), block_size)
    t = sum(q_lens)
    q, k, v = rand(t, heads, dim), rand(t, kv_heads, dim), rand(t, kv_heads, dim)
    scale = dim**-0.5
    mask = (window, rand(heads).float() * 2 if sinks else None, chunk)
    out = backend.forward(q, k, v, kv, meta, scale, *mask)
    if codec_name in DTYPES:  # the step's K/V landed in their slots (quantized codecs: the codec's own tests)
        pages = meta.slot_mapping // block_size
        assert torch.equal(kv.k["data"][pages, meta.slot_mapping % block_size], k)
        assert torch.equal(kv.v["data"][pages, meta.slot_mapping % block_size], v)
    ref = TorchAttention()  # the engine's reference: rewrites the same K/V (deterministically), then attends
    ref.bind(len(seqs), max(need), DEVICE)
    return out, ref.forward(q, k, v, kv, ref.prepare(seqs, len(prefills), block_size), scale, *mask)


def check(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.dtype == ref.dtype and out.shape == ref.shape
    err = (out.float() - ref).abs().max().item()
    assert err <= TOL[out.dtype] * max(1.0, ref.abs().max().item()), f"max abs error {err}"


@pytest.mark.parametrize("codec_name", ["fp32", "bf16", "fp16"])
def test_prefill_without_prefix_varlen_odd_lengths(codec_name):
    check(*run_batch(codec_name, prefills=[(0, 5), (0, 19), (0, 1)], decodes=[], heads=4, kv_heads=2))


@pytest.mark.parametrize(("cached", "new", "block_size"), [(13, 7, 4), (16, 16, 16), (3, 33, 16)])
def test_prefill_with_cached_prefix(cached, new, block_size):
    """Chunks that start mid-page, exactly on a page (and tile) border, and span several tiles."""
    check(*run_batch("fp32", prefills=[(cached, new), (5, 2)], decodes=[], heads=4, kv_heads=1,
                     block_size=block_size))


@pytest.mark.parametrize(("heads", "kv_heads", "splits"), [(2, 2, None), (4, 2, 4), (8, 2, None), (8, 1, 4)])
def test_decode_gqa_and_splits(heads, kv_heads, splits):
    """Contexts of 1 token, a page border, and several tiles; G = 1, 2, 4, 8; one split or four (some of them
    empty for the short contexts)."""
    check(*run_batch("fp32", prefills=[], decodes=[1, 16, 37, 70], heads=heads, kv_heads=kv_heads,
                     splits=splits))


@pytest.mark.parametrize("codec_name", ["bf16", "fp16"])
def test_mixed_batch_half_precision_odd_head_dim(codec_name):
    """Prefill chunks and decodes in one forward, head dim 24 (padded to 32 in registers)."""
    check(*run_batch(codec_name, prefills=[(9, 6)], decodes=[23, 4], heads=6, kv_heads=2, dim=24, splits=2))


@pytest.mark.parametrize("codec_name", ["fp8", "int8", "int4", "int4-g8"])
def test_quantized_pages_decoded_in_kernel(codec_name):
    """Codes and their scales (and offsets) read from the page; prefill over a cached prefix and decodes with
    splits, GQA 2, against the codec's own decode of the same bytes."""
    check(*run_batch(codec_name, prefills=[(13, 6)], decodes=[29, 5], heads=4, kv_heads=2, splits=2))


@pytest.mark.parametrize(("window", "chunk", "sinks", "codec_name"),
                         [(5, 0, False, "fp32"), (0, 8, False, "fp32"), (0, 0, True, "fp32"), (7, 0, True, "int8"),
                          (0, 16, True, "bf16")])
def test_windows_chunks_and_sinks(window, chunk, sinks, codec_name):
    """Sliding windows (Gemma 3, gpt-oss), chunks (Llama 4) and sink logits (gpt-oss), in prefill over a cached
    prefix and in split decode, where whole tiles and whole splits fall outside a query's window."""
    out, ref = run_batch(codec_name, [(13, 7), (0, 21), (40, 3)], [30, 9, 64], heads=4, kv_heads=2, splits=4,
                         window=window, chunk=chunk, sinks=sinks)
    check(out, ref)


def test_codec_with_keys_outside_the_pages_is_refused():
    from agentkv.kernels.page_layout import unsupported

    assert "torch attention backend" in unsupported(get_codec("int4-kivi"))
    with pytest.raises(NotImplementedError, match="partial block"):
        run_batch("int4-kivi", prefills=[(0, 5)], decodes=[], heads=2, kv_heads=2)


def test_cpu_without_interpreter_is_refused(monkeypatch):
    import agentkv.kernels.triton_attention as ta

    if DEVICE.type == "cuda":
        pytest.skip("a CUDA machine runs the compiled kernels")
    monkeypatch.setattr(ta, "INTERPRET", False)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        TritonAttention().bind(1, 1, torch.device("cpu"))


def test_kernels_compile_for_h100_without_spills():
    """Compiled ahead of time for sm_90 (no GPU needed, Triton's own ptxas): tensor-core matmuls, pipelined
    loads, no register spills, for the widest page format (bf16 prefill) and the most unpacking (int4 decode)."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json; from bench.attention import compile_sm90; "
            "print(json.dumps([compile_sm90('prefill', 'bf16', 0, 1, 8), compile_sm90('decode', 'u8', 2, 32, 4)]))")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    prefill, decode = json.loads(out.stdout.strip().splitlines()[-1])
    assert prefill["mma"] == "wgmma" and decode["mma"] in ("mma.sync", "wgmma")
    assert prefill["stack"] == decode["stack"] == 0 and prefill["pipelined"] and decode["pipelined"]
