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
from agentkv.kernels.page_layout import KernelPages, kernel_pages

INTERPRET = triton.knobs.runtime.interpret  # TRITON_INTERPRET=1: kernels run in numpy on CPU (tests)
LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)  # softmax in base 2: exp2 is one instruction


@triton.jit
def _load_codes(data, pg, off, h, n_mask, sp, st, sh, QUANT: tl.constexpr, D: tl.constexpr,
                BLOCK_D: tl.constexpr):
    """Tokens (page pg[n], offset off[n]) of KV head h as stored, [BLOCK_N, BLOCK_D]: values, or codes (QUANT 2:
    4-bit codes two a byte, even dims in the low nibble). Each token's row is one contiguous, vectorized load;
    nibbles are split in registers."""
    row = pg.to(tl.int64) * sp + off * st + h * sh
    if QUANT == 2:
        b = tl.arange(0, BLOCK_D // 2)
        packed = tl.load(data + row[:, None] + b[None, :], mask=n_mask[:, None] & (b < D // 2)[None, :], other=0)
        return tl.interleave(packed & 15, packed >> 4)
    d = tl.arange(0, BLOCK_D)
    return tl.load(data + row[:, None] + d[None, :], mask=n_mask[:, None] & (d < D)[None, :], other=0.0)


@triton.jit
def _token_scales(scale, offset, pg, off, h, n_mask, cp, ct, ch, zp, zt, zh, QUANT: tl.constexpr):
    """Each token's scale and offset (0 unless QUANT 2) when one covers the whole head vector: [BLOCK_N] each."""
    s = tl.load(scale + pg.to(tl.int64) * cp + off * ct + h * ch, mask=n_mask, other=0.0).to(tl.float32)
    z = tl.zeros_like(s)
    if QUANT == 2:
        z = tl.load(offset + pg.to(tl.int64) * zp + off * zt + h * zh, mask=n_mask, other=0.0).to(tl.float32)
    return s, z


@triton.jit
def _load_kv(data, scale, offset, pg, off, h, n_mask,
             sp, st, sh, cp, ct, ch, cg, zp, zt, zh, zg,
             QUANT: tl.constexpr, GROUP: tl.constexpr, OUT: tl.constexpr,
             BLOCK_N: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr):
    """The tile decoded to values in OUT. QUANT 0: as stored; 1: code × scale (fp8, int8); 2: code × scale +
    offset (int4). A scale (and offset) covers GROUP dims of a token's head vector; they are addressed by
    strides (page, token, head, group), and broadcast in registers."""
    x = _load_codes(data, pg, off, h, n_mask, sp, st, sh, QUANT, D, BLOCK_D)
    if QUANT == 0:
        return x.to(OUT)
    x = x.to(tl.float32)
    if GROUP >= D:  # one scale (and offset) per token and head
        s, z = _token_scales(scale, offset, pg, off, h, n_mask, cp, ct, ch, zp, zt, zh, QUANT)
        return (x * s[:, None] + z[:, None]).to(OUT)
    # groups of a head vector (D == BLOCK_D here): [N, groups] scales over [N, groups, GROUP] values
    g = tl.arange(0, BLOCK_D // GROUP)
    srow = pg.to(tl.int64) * cp + off * ct + h * ch
    s = tl.load(scale + srow[:, None] + g[None, :] * cg, mask=n_mask[:, None], other=0.0).to(tl.float32)
    x = tl.reshape(x, (BLOCK_N, BLOCK_D // GROUP, GROUP)) * s[:, :, None]
    if QUANT == 2:
        zrow = pg.to(tl.int64) * zp + off * zt + h * zh
        z = tl.load(offset + zrow[:, None] + g[None, :] * zg, mask=n_mask[:, None], other=0.0).to(tl.float32)
        x += z[:, :, None]
    return tl.reshape(x, (BLOCK_N, BLOCK_D)).to(OUT)


@triton.jit
def _mm(a, b, dot_type: tl.constexpr):
    """a @ b in fp32: tensor cores in the half types, exact IEEE products (no TF32) when operands are fp32."""
    if dot_type == tl.float32:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _first_seen(pos, WINDOW: tl.constexpr, CHUNK: tl.constexpr):
    """The first key a query at `pos` sees: its window's, its chunk's start, or 0."""
    if WINDOW > 0:
        return tl.maximum(pos - WINDOW + 1, 0)
    if CHUNK > 0:
        return pos // CHUNK * CHUNK
    return pos * 0


@triton.jit
def _softmax_step(s, m_i, l_i):
    """One tile of the online softmax (base 2): the new running max, the tile's probabilities, the old sum's
    rescale; a row that has seen no key yet (masked by a window or chunk) keeps a max of -inf, no NaN."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    base = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - base[:, None])
    alpha = tl.exp2(m_i - base)
    return m_new, p, alpha, l_i * alpha + tl.sum(p, 1)


@triton.jit
def _tile_pages(block_tables, n, n_mask, BS: tl.constexpr):
    pg = tl.load(block_tables + n // BS, mask=n_mask, other=0)
    return pg, n % BS


@triton.jit
def _prefill_kernel(
    q, o, k, ks, kz, v, vs, vz, block_tables, query_start, seq_lens, sm_scale, sinks,
    q_st, q_sh, o_st, o_sh, bt_stride,
    k_sp, k_st, k_sh, ks_p, ks_t, ks_h, ks_g, kz_p, kz_t, kz_h, kz_g,
    v_sp, v_st, v_sh, vs_p, vs_t, vs_h, vs_g, vz_p, vz_t, vz_h, vz_g,
    G: tl.constexpr, BS: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, DOT: tl.constexpr,
    K_QUANT: tl.constexpr, K_GROUP: tl.constexpr, V_QUANT: tl.constexpr, V_GROUP: tl.constexpr,
    WINDOW: tl.constexpr, CHUNK: tl.constexpr, SINKS: tl.constexpr,
):
    """Grid (query blocks, prefill sequences, heads): BLOCK_M new tokens of one head attend causally over the
    sequence's pages (cached prefix and the chunk itself), within their window or chunk where set; a sink
    logit per head starts the running softmax where SINKS."""
    mb, b, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    q0 = tl.load(query_start + b)
    q_len = tl.load(query_start + b + 1) - q0
    if mb * BLOCK_M >= q_len:
        return
    seq_len = tl.load(seq_lens + b)
    m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = m < q_len
    qpos = seq_len - q_len + m
    d = tl.arange(0, BLOCK_D)
    d_mask = d < D
    qm = m_mask[:, None] & d_mask[None, :]
    qt = tl.load(q + (q0 + m).to(tl.int64)[:, None] * q_st + h * q_sh + d[None, :], mask=qm, other=0.0)
    qt = (qt.to(tl.float32) * (sm_scale * LOG2E)).to(DOT)
    kvh = h // G
    tables = block_tables + b.to(tl.int64) * bt_stride
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    if SINKS:  # one more key, of value 0: exp2(sink - max) joins the sum
        m_i = tl.zeros([BLOCK_M], tl.float32) + tl.load(sinks + h).to(tl.float32) * LOG2E
        l_i += 1.0
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    first = seq_len - q_len + mb * BLOCK_M  # keys before `first` are visible to every query of the block
    full = first // BLOCK_N * BLOCK_N
    end = tl.minimum(seq_len, first + BLOCK_M)
    lo = _first_seen(first, WINDOW, CHUNK) // BLOCK_N * BLOCK_N  # tiles before it no query of the block sees
    for n0 in range(lo, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = n < end
        pg, off = _tile_pages(tables, n, n_mask, BS)
        kt = _load_kv(k, ks, kz, pg, off, kvh, n_mask, k_sp, k_st, k_sh, ks_p, ks_t, ks_h, ks_g,
                      kz_p, kz_t, kz_h, kz_g, K_QUANT, K_GROUP, DOT, BLOCK_N, D, BLOCK_D)
        s = _mm(qt, tl.trans(kt), DOT)
        if WINDOW > 0 or CHUNK > 0:  # every tile: causal, and from each query's first visible key
            seen = (n[None, :] <= qpos[:, None]) & (n[None, :] >= _first_seen(qpos, WINDOW, CHUNK)[:, None])
            s = tl.where(seen, s, float("-inf"))
        elif n0 >= full:  # the diagonal tiles: causal mask (and the sequence's end)
            s = tl.where(n[None, :] <= qpos[:, None], s, float("-inf"))
        m_new, p, alpha, l_i = _softmax_step(s, m_i, l_i)
        vt = _load_kv(v, vs, vz, pg, off, kvh, n_mask, v_sp, v_st, v_sh, vs_p, vs_t, vs_h, vs_g,
                      vz_p, vz_t, vz_h, vz_g, V_QUANT, V_GROUP, DOT, BLOCK_N, D, BLOCK_D)
        acc = acc * alpha[:, None] + _mm(p.to(DOT), vt, DOT)
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(o + (q0 + m).to(tl.int64)[:, None] * o_st + h * o_sh + d[None, :], out.to(o.dtype.element_ty), mask=qm)


@triton.jit
def _decode_kernel(
    q, o, part_o, part_lse, k, ks, kz, v, vs, vz, block_tables, query_start, seq_lens, sm_scale, sinks, first_row,
    q_st, q_sh, o_st, o_sh, bt_stride,
    k_sp, k_st, k_sh, ks_p, ks_t, ks_h, ks_g, kz_p, kz_t, kz_h, kz_g,
    v_sp, v_st, v_sh, vs_p, vs_t, vs_h, vs_g, vz_p, vz_t, vz_h, vz_g,
    H: tl.constexpr, G: tl.constexpr, BLOCK_G: tl.constexpr, BS: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLITS: tl.constexpr, DOT: tl.constexpr,
    K_QUANT: tl.constexpr, K_GROUP: tl.constexpr, V_QUANT: tl.constexpr, V_GROUP: tl.constexpr,
    WINDOW: tl.constexpr, CHUNK: tl.constexpr, SINKS: tl.constexpr,
):
    """Grid (decodes, KV heads, splits): the G query heads sharing one KV head attend over one split of the
    context (its part within the window or chunk); the partial output and its log-sum-exp (base 2) go to
    part_o / part_lse unless SPLITS == 1. The sinks join split 0 only, so the merge counts them once."""
    i, kvh, sp = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b = first_row + i
    t = tl.load(query_start + b).to(tl.int64)
    seq_len = tl.load(seq_lens + b)
    per = tl.cdiv(tl.cdiv(seq_len, BLOCK_N), SPLITS) * BLOCK_N
    start = sp * per
    stop = tl.minimum(seq_len, start + per)
    g = tl.arange(0, BLOCK_G)
    g_mask = g < G
    heads = kvh * G + g
    d = tl.arange(0, BLOCK_D)
    d_mask = d < D
    qm = g_mask[:, None] & d_mask[None, :]
    qt = tl.load(q + t * q_st + heads[:, None] * q_sh + d[None, :], mask=qm, other=0.0)
    qt = (qt.to(tl.float32) * (sm_scale * LOG2E)).to(DOT)
    q_sum = tl.sum(qt.to(tl.float32), 1)  # for int4 keys' offsets
    tables = block_tables + b.to(tl.int64) * bt_stride
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    if SINKS:
        sink = tl.load(sinks + heads, mask=g_mask, other=0.0).to(tl.float32) * LOG2E
        m_i = tl.where(sp == 0, sink, m_i)
        l_i = tl.where(sp == 0, 1.0, l_i)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    lo = _first_seen(seq_len - 1, WINDOW, CHUNK)
    for n0 in range(tl.maximum(start, lo // BLOCK_N * BLOCK_N), stop, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        n_mask = (n < stop) & (n >= lo)
        pg, off = _tile_pages(tables, n, n_mask, BS)
        if K_QUANT != 0 and K_GROUP >= D:  # q·(c s + z) = s (q·c) + z Σq: the codes go to the tensor cores
            kc = _load_codes(k, pg, off, kvh, n_mask, k_sp, k_st, k_sh, K_QUANT, D, BLOCK_D).to(DOT)
            sk, zk = _token_scales(ks, kz, pg, off, kvh, n_mask, ks_p, ks_t, ks_h, kz_p, kz_t, kz_h, K_QUANT)
            s = _mm(qt, tl.trans(kc), DOT) * sk[None, :] + q_sum[:, None] * zk[None, :]
        else:
            kt = _load_kv(k, ks, kz, pg, off, kvh, n_mask, k_sp, k_st, k_sh, ks_p, ks_t, ks_h, ks_g,
                          kz_p, kz_t, kz_h, kz_g, K_QUANT, K_GROUP, DOT, BLOCK_N, D, BLOCK_D)
            s = _mm(qt, tl.trans(kt), DOT)
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new, p, alpha, l_i = _softmax_step(s, m_i, l_i)
        if V_QUANT != 0 and V_GROUP >= D:  # p·(c s + z) = (p s)·c + p·z: scales on the probabilities
            vc = _load_codes(v, pg, off, kvh, n_mask, v_sp, v_st, v_sh, V_QUANT, D, BLOCK_D).to(DOT)
            sv, zv = _token_scales(vs, vz, pg, off, kvh, n_mask, vs_p, vs_t, vs_h, vz_p, vz_t, vz_h, V_QUANT)
            pv = _mm((p * sv[None, :]).to(DOT), vc, DOT) + tl.sum(p * zv[None, :], 1)[:, None]
        else:
            vt = _load_kv(v, vs, vz, pg, off, kvh, n_mask, v_sp, v_st, v_sh, vs_p, vs_t, vs_h, vs_g,
                          vz_p, vz_t, vz_h, vz_g, V_QUANT, V_GROUP, DOT, BLOCK_N, D, BLOCK_D)
            pv = _mm(p.to(DOT), vt, DOT)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    if SPLITS == 1:
        out = acc / l_i[:, None]
        tl.store(o + t * o_st + heads[:, None] * o_sh + d[None, :], out.to(o.dtype.element_ty), mask=qm)
    else:
        empty = l_i == 0.0  # a split past the end of a short sequence
        out = acc / tl.where(empty, 1.0, l_i)[:, None]
        lse = tl.where(empty, float("-inf"), m_i + tl.log2(tl.where(empty, 1.0, l_i)))
        row = i.to(tl.int64) * H + heads  # [decode, head] flattened
        tl.store(part_o + (row[:, None] * SPLITS + sp) * BLOCK_D + d[None, :], out, mask=g_mask[:, None])
        tl.store(part_lse + row * SPLITS + sp, lse, mask=g_mask)


@triton.jit
def _reduce_kernel(o, part_o, part_lse, query_start, first_row, o_st, o_sh,
                   H: tl.constexpr, D: tl.constexpr, BLOCK_D: tl.constexpr, SPLITS: tl.constexpr):
    """Grid (decodes, heads): merge the splits' partial outputs, each weighted by 2^(lse - max lse)."""
    i, h = tl.program_id(0), tl.program_id(1)
    t = tl.load(query_start + first_row + i).to(tl.int64)
    row = i.to(tl.int64) * H + h
    s = tl.arange(0, SPLITS)
    d = tl.arange(0, BLOCK_D)
    lse = tl.load(part_lse + row * SPLITS + s)
    w = tl.exp2(lse - tl.max(lse, 0))
    parts = tl.load(part_o + (row * SPLITS + s)[:, None] * BLOCK_D + d[None, :])
    out = tl.sum(parts * w[:, None], 0) / tl.sum(w, 0)
    tl.store(o + t * o_st + h * o_sh + d, out.to(o.dtype.element_ty), mask=d < D)


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
            raise NotImplementedError(f"KV codec {kv.codec.name}: scale groups within a head of {dim} values "
                                      "(not a power of two) are not supported by the Triton kernels")
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
        _prefill_kernel[grid](
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
        _decode_kernel[(n_dec, kv_heads, splits)](
            q, out, part_o, part_lse, *self._common(kp, vp, meta), *margs, meta.num_prefills,
            q.stride(0), q.stride(1), out.stride(0), out.stride(1), meta.block_tables.stride(0),
            *_stride_args(kp), *_stride_args(vp),
            H=heads, G=g, BLOCK_G=max(16, triton.next_power_of_2(g)), BS=block_size, D=dim, BLOCK_D=block_d,
            SPLITS=splits, DOT=_dot_dtype(q.dtype),
            K_QUANT=kp.quant, K_GROUP=kp.group, V_QUANT=vp.quant, V_GROUP=vp.group, **mconst, **self.decode,
        )
        if splits > 1:
            _reduce_kernel[(n_dec, heads)](out, part_o, part_lse, meta.query_start_loc, meta.num_prefills,
                                           out.stride(0), out.stride(1), H=heads, D=dim, BLOCK_D=block_d,
                                           SPLITS=splits)
