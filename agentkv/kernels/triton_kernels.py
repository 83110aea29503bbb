"""The Triton kernels of the paged attention backend (kernels/triton_attention.py says why they take these
shapes): the varlen prefill, the split-K decode and the reduction that merges the decode's splits, with the
helpers they share (page loads decoded in registers, the online softmax, windows and chunks)."""

from __future__ import annotations

import triton
import triton.language as tl

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
def prefill_kernel(
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
def decode_kernel(
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
def reduce_kernel(o, part_o, part_lse, query_start, first_row, o_st, o_sh,
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
