"""Paged attention in Triton: a FlashAttention-style prefill over varlen chunks and a split-K (flash-decoding)
decode, both reading K/V straight from the codec's pages and decoding quantized pages in registers.

Why these shapes. Prefill is compute-bound: each program owns BLOCK_M queries of one head and streams the
sequence's keys tile by tile with an online softmax (no score matrix in memory); tiles wholly below the query
block skip the causal mask. Decode is bandwidth-bound: one program owns one KV head of one sequence and every
query head that shares it (GQA), so each K/V page is read once per group, and the context is cut into splits
so that even batch 1 at 128k fills the GPU; a second kernel merges the splits by their log-sum-exp.
Quantized pages (fp8, int8, int4) cross HBM in their stored width and are decoded only in registers: the
bandwidth saved is the point of quantizing (SGLang: unfused dequantization is "extremely slow"). Where one
scale covers a token's head vector, decode hands the codes to the tensor cores as they are and applies the
scales (and int4's offsets) to the scores and probabilities instead.

Every key, the new tokens' included, is read from the pages after `encode_into` wrote them, exactly as the
torch reference does, so both see the same (possibly quantized) values. Token t's page is looked up per key
(`block_tables[b, n // block_size]`), so any page size works with any tile size.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import triton
import triton.language as tl

from agentkv.kernels.attention import AttentionBackend, AttentionMetadata, LayerKV, Mask
from agentkv.kernels.page_layout import KernelPages, kernel_pages, unsupported
from agentkv.kernels.triton_kernels import INTERPRET, decode_kernel, prefill_kernel, reduce_kernel


def _dot_dtype(dtype: torch.dtype):
    """Matmul operand type: the model's half type on the GPU; fp32 in the interpreter, whose bf16 arithmetic
    works on raw bits (triton 3.x), and for fp32 models (exact IEEE products against references)."""
    if INTERPRET or dtype == torch.float32:
        return tl.float32
    return {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype]


def _page_args(p: KernelPages) -> tuple:
    return (p.data, p.scale, p.offset)


def _stride_args(p: KernelPages) -> tuple:
    return (*p.data_strides, *p.scale_strides, *p.offset_strides)


def num_splits(num_decodes: int, kv_heads: int, max_seq_len: int, block_n: int, sms: int) -> int:
    """Enough programs to fill the GPU twice over, never a split shorter than two tiles; a power of two."""
    want = max(1, 2 * sms // max(1, num_decodes * kv_heads))
    most = max(1, max_seq_len // (2 * block_n))
    return 1 << (min(want, most, 64).bit_length() - 1)


class TritonAttention(AttentionBackend):
    """The engine's GPU backend (and, under TRITON_INTERPRET=1, a CPU-testable one): paged prefill and
    split-K decode over pages of any codec."""

    def __init__(self) -> None:
        # launch settings (bench.attention sweeps them on a GPU); the interpreter's cost is per element: small
        # tiles there, so that tests cross tile borders
        self.prefill = dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3)
        self.decode = dict(BLOCK_N=64, num_warps=4, num_stages=3)
        if INTERPRET:
            self.prefill = dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)
            self.decode = dict(BLOCK_N=16, num_warps=4, num_stages=1)
        self.fixed_splits: int | None = None  # set while capturing CUDA graphs: the grid must not change
        self.sms = 4

    def bind(self, max_rows: int, max_pages: int, device: torch.device) -> None:
        device = torch.device(device)
        if device.type != "cuda" and not INTERPRET:
            raise ValueError("the triton attention backend needs a CUDA device "
                             "(or TRITON_INTERPRET=1 to run its kernels in the interpreter on CPU)")
        if device.type == "cuda":
            self.sms = torch.cuda.get_device_properties(device).multi_processor_count
        super().bind(max_rows, max_pages, device)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: LayerKV, meta: AttentionMetadata,
                scale: float, window: int = 0, sinks: torch.Tensor | None = None, chunk: int = 0) -> torch.Tensor:
        if kv.group:
            meta = meta.groups[kv.group - 1]
        kv.codec.encode_into(kv.k, meta.slot_mapping, k)
        kv.codec.encode_into(kv.v, meta.slot_mapping, v)
        return self.attend(q, kv, meta, Mask(scale, window, sinks, chunk))

    def attend(self, q: torch.Tensor, kv: LayerKV, meta: AttentionMetadata, mask: Mask | float) -> torch.Tensor:
        """Attention over pages that already hold the step's K/V (benchmarks time this part alone); `mask` a
        layer's (its scale, window or chunk, sinks), or just the scale."""
        mask = mask if isinstance(mask, Mask) else Mask(mask)
        out = torch.empty_like(q)
        kp, vp = kernel_pages(kv.codec, kv.k), kernel_pages(kv.codec, kv.v)
        kv_heads, dim = kp.data.shape[2], q.shape[2]
        if any(p.quant and p.group < dim for p in (kp, vp)) and dim != triton.next_power_of_2(dim):
            raise NotImplementedError(unsupported(kv.codec, dim))  # an engine refuses this at start-up
        if meta.num_prefills:
            self._prefill(q, out, kp, vp, kv.block_size, kv_heads, meta, mask)
        if meta.seq_lens.shape[0] > meta.num_prefills:
            self._decode(q, out, kp, vp, kv.block_size, kv_heads, meta, mask)
        return out

    @contextmanager
    def capturing(self, num_decodes: int, kv_heads: int, max_seq_len: int) -> Iterator[None]:
        """While a CUDA graph of `num_decodes` decodes is captured: a split count fixed for the longest context
        it will replay, so one graph serves every context length (each split finds its range on the device)."""
        self.fixed_splits = num_splits(num_decodes, kv_heads, max_seq_len, self.decode["BLOCK_N"], self.sms)
        try:
            yield
        finally:
            self.fixed_splits = None

    @staticmethod
    def _common(kp: KernelPages, vp: KernelPages, meta: AttentionMetadata) -> tuple:
        return (*_page_args(kp), *_page_args(vp), meta.block_tables, meta.query_start_loc, meta.seq_lens)

    @staticmethod
    def _mask_args(q: torch.Tensor, mask: Mask) -> tuple[tuple, dict]:
        """The sinks' pointer (q where there are none: never read) and the mask's compile-time constants."""
        sinks = q if mask.sinks is None else mask.sinks
        return (mask.scale, sinks), dict(WINDOW=mask.window, CHUNK=mask.chunk, SINKS=mask.sinks is not None)

    def _prefill(self, q, out, kp, vp, block_size, kv_heads, meta, mask) -> None:
        heads, dim = q.shape[1], q.shape[2]
        grid = (triton.cdiv(meta.max_query_len, self.prefill["BLOCK_M"]), meta.num_prefills, heads)
        margs, mconst = self._mask_args(q, mask)
        prefill_kernel[grid](
            q, out, *self._common(kp, vp, meta), *margs,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1), meta.block_tables.stride(0),
            *_stride_args(kp), *_stride_args(vp),
            G=heads // kv_heads, BS=block_size, D=dim, BLOCK_D=triton.next_power_of_2(dim),
            DOT=_dot_dtype(q.dtype), K_QUANT=kp.quant, K_GROUP=kp.group, V_QUANT=vp.quant, V_GROUP=vp.group,
            **mconst, **self.prefill,
        )

    def _decode(self, q, out, kp, vp, block_size, kv_heads, meta, mask) -> None:
        heads, dim = q.shape[1], q.shape[2]
        n_dec = meta.seq_lens.shape[0] - meta.num_prefills
        g = heads // kv_heads
        block_d = triton.next_power_of_2(dim)
        splits = self.fixed_splits or num_splits(n_dec, kv_heads, meta.max_seq_len, self.decode["BLOCK_N"], self.sms)
        assert splits & (splits - 1) == 0, f"decode splits must be a power of two, got {splits}"
        part_o = part_lse = out  # unused when one split writes the output itself
        if splits > 1:
            part_o = torch.empty(n_dec, heads, splits, block_d, dtype=torch.float32, device=q.device)
            part_lse = torch.empty(n_dec, heads, splits, dtype=torch.float32, device=q.device)
        margs, mconst = self._mask_args(q, mask)
        decode_kernel[(n_dec, kv_heads, splits)](
            q, out, part_o, part_lse, *self._common(kp, vp, meta), *margs, meta.num_prefills,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1), meta.block_tables.stride(0),
            *_stride_args(kp), *_stride_args(vp),
            H=heads, G=g, BLOCK_G=max(16, triton.next_power_of_2(g)), BS=block_size, D=dim, BLOCK_D=block_d,
            SPLITS=splits, DOT=_dot_dtype(q.dtype),
            K_QUANT=kp.quant, K_GROUP=kp.group, V_QUANT=vp.quant, V_GROUP=vp.group, **mconst, **self.decode,
        )
        if splits > 1:
            reduce_kernel[(n_dec, heads)](out, part_o, part_lse, meta.query_start_loc, meta.num_prefills,
                                           out.stride(0), out.stride(1), H=heads, D=dim, BLOCK_D=block_d,
                                           SPLITS=splits)
