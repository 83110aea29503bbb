"""Every KV codec: round trip within its stated bound, deterministic bytes, and pages exactly as large as
kvcache.sizing says (the figure the policy core, simulator and report use)."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agentkv.catalog import model
from agentkv.codecs import get_codec
from agentkv.kvcache.sizing import CODECS, codec, kv_bytes_per_block, kv_bytes_per_token

NAMES = ["bf16", "fp16", "fp32", "fp8", "int8", "int4", "int4-g32", "int4-kivi"]


def half_fields(c, keys: bool, bs: int, heads: int, dim: int):
    return c.key_fields(bs, heads, dim) if keys else c.value_fields(bs, heads, dim)


def pool(c, num_pages: int, bs: int, heads: int, dim: int, layers: int = 1) -> tuple[torch.Tensor, list]:
    """A byte slab [num_pages, page_bytes] and typed views of each layer's K and V fields, as the engine lays
    them out (K fields then V fields, layer after layer)."""
    halves = [half_fields(c, keys, bs, heads, dim) for _ in range(layers) for keys in (True, False)]
    page = sum(f.nbytes for fs in halves for f in fs)
    slab = torch.zeros(num_pages, page, dtype=torch.uint8)
    off, views = 0, []
    for fs in halves:
        view = {}
        for f in fs:
            view[f.name] = slab[:, off : off + f.nbytes].view(f.dtype).view(num_pages, *f.shape)
            off += f.nbytes
        views.append(view)
    return slab, views


@st.composite
def kv(draw):
    """Activations with real KV's features: a spread of magnitudes, a few outlier channels, an outlier token."""
    bs = draw(st.sampled_from([1, 4, 16]))
    heads = draw(st.integers(1, 3))
    dim = draw(st.sampled_from([32, 64, 128]))
    tokens = draw(st.integers(1, 3 * bs + 2))
    seed = draw(st.integers(0, 2**16))
    scale = draw(st.sampled_from([1e-3, 1.0, 30.0]))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, heads, dim, generator=g) * scale
    x[:, :, torch.randint(0, dim, (2,), generator=g)] *= 20  # outlier channels
    x[0] *= draw(st.sampled_from([1.0, 8.0]))  # an attention-sink-like token
    cuts = sorted(set(draw(st.lists(st.integers(1, tokens), max_size=3))) - {tokens})
    return bs, x, [0, *cuts, tokens]


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, deadline=None)
@given(case=kv(), keys=st.booleans())
def test_round_trip_within_bound(name, case, keys):
    bs, x, cuts = case
    c = get_codec(name)
    heads, dim = x.shape[1:]
    pages = -(-len(x) // bs)
    _, views = pool(c, pages + 2, bs, heads, dim)
    order = torch.randperm(pages + 2, generator=torch.Generator().manual_seed(len(x)))[:pages]  # scattered pages
    slots = (order[:, None] * bs + torch.arange(bs)).flatten()[: len(x)]
    for a, b in itertools.pairwise(cuts):  # written in chunks, as prefill chunks and decodes write
        c.encode_into(views[0 if keys else 1], slots[a:b], x[a:b])
    y = c.decode(views[0 if keys else 1], order, torch.float32).flatten(0, 1)[: len(x)]
    err, bound = (y - x).abs(), c.bound(x, keys=keys, block_size=bs)
    assert bool((err <= bound).all()), f"{name}: max excess {(err - bound).max().item():.3g}"


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=10, deadline=None)
@given(case=kv())
def test_encoding_is_deterministic_and_chunking_free(name, case):
    """Same tokens → same bytes, whether written at once (prefill) or in pieces (chunks, decodes). (int4-kivi's
    tag of a partial block names its residual, a fresh id each time: only it may differ.)"""
    bs, x, cuts = case
    c = get_codec(name)
    slots = torch.arange(len(x))
    runs = []
    for pieces in ([0, len(x)], cuts, [0, len(x)]):
        _, views = pool(c, -(-len(x) // bs), bs, *x.shape[1:])
        for a, b in itertools.pairwise(pieces):
            for v in views:
                c.encode_into(v, slots[a:b], x[a:b])
        runs.append([(k, t.clone()) for v in views for k, t in v.items() if k != "tag"])
    for run in runs[1:]:
        assert all(torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for (_, a), (_, b) in zip(runs[0], run, strict=True))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("model_name", ["llama-3.1-8b", "llama-3.1-70b", "qwen3-32b", "qwen3-235b-a22b"])
@pytest.mark.parametrize("bs", [16, 32])
def test_page_bytes_equal_sizing(name, model_name, bs):
    m, c = model(model_name), get_codec(name)
    per_layer = sum(f.nbytes for keys in (True, False) for f in half_fields(c, keys, bs, m.kv_heads, m.head_dim))
    assert m.layers * per_layer == kv_bytes_per_block(m, codec(name), bs)
    if not codec(name).channel_keys:  # whole bytes per token: no codec rounds a fraction away
        assert kv_bytes_per_token(m, codec(name)) == int(kv_bytes_per_token(m, codec(name)))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("heads,dim", [(1, 64), (2, 96), (8, 128)])
def test_page_bytes_equal_sizing_on_small_shapes(name, heads, dim):
    """head_dim 64 (int8: 64 + 2 bytes a vector, not a fractional 65.0) and 96 (not a power of two)."""
    from dataclasses import replace

    m = replace(model("llama-3.1-8b"), layers=3, kv_heads=heads, head_dim=dim)
    slab, _ = pool(get_codec(name), 1, 16, heads, dim, layers=3)
    assert slab.shape[1] == kv_bytes_per_block(m, codec(name), 16)


def test_every_sizing_codec_has_an_implementation():
    assert set(CODECS) <= set(NAMES)
    for name in CODECS:
        assert get_codec(name).spec == codec(name)


def test_bad_names_and_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="unknown KV codec 'int3'"):
        get_codec("int3")
    with pytest.raises(ValueError, match="groups of 48"):
        get_codec("int4-g48").fields(16, 2, 64)


def test_fp8_and_int8_keep_outlier_tokens_and_quiet_ones():
    """Per-token scales: a token 1000× smaller than its neighbours keeps its own precision."""
    x = torch.randn(2, 1, 64)
    x[1] *= 1e-3
    for name in ("fp8", "int8"):
        c = get_codec(name)
        _, (k, _v) = pool(c, 1, 2, 1, 64)
        c.encode_into(k, torch.arange(2), x)
        rel = (c.decode(k, torch.tensor([0]), torch.float32)[0] - x).norm(dim=-1) / x.norm(dim=-1)
        assert float(rel.max()) < 0.05, name


def test_kivi_seals_whole_blocks_and_keeps_the_partial_block_exact():
    c = get_codec("int4-kivi")
    x = torch.randn(20, 2, 64)
    _, (k, _v) = pool(c, 2, 16, 2, 64)
    c.encode_into(k, torch.arange(20), x)
    y = c.decode(k, torch.tensor([0, 1]), torch.float32).flatten(0, 1)
    assert torch.equal(y[16:20], x[16:20])  # the partial block: full precision
    assert k["tag"][0, 0] == 0 and k["tag"][1, 0] != 0
    assert float((y[:16] - x[:16]).abs().max()) > 0  # the sealed block: int4
    c.encode_into(k, torch.arange(20, 32), torch.randn(12, 2, 64))  # the block fills: sealed, residual gone
    assert k["tag"][1, 0] == 0 and not c._open


def test_kivi_sealed_blocks_are_immutable():
    """The engine recomputes the last token of a fully cached prompt into its sealed block: it stays as is."""
    c = get_codec("int4-kivi")
    x = torch.randn(16, 1, 64)
    slab, (k, _v) = pool(c, 1, 16, 1, 64)
    c.encode_into(k, torch.arange(16), x)
    before = slab.clone()
    c.encode_into(k, torch.tensor([15]), x[15:] * 1.001)
    assert torch.equal(slab, before) and not c._open


def test_kivi_never_serves_stale_or_missing_residuals():
    c = get_codec("int4-kivi")
    x = torch.randn(16, 1, 64)
    slab, (k, _v) = pool(c, 3, 16, 1, 64)
    c.encode_into(k, torch.arange(16), x)  # page 0: sealed
    c.encode_into(k, 16 * 2 + torch.arange(5), x[:5])  # page 2: partial, its keys in the residual
    slab[2] = slab[0]  # a tier copy lands a sealed block on page 2: its bytes win over the stale residual
    assert torch.equal(c.decode(k, torch.tensor([2]), torch.float32), c.decode(k, torch.tensor([0]), torch.float32))
    c.encode_into(k, 16 * 2 + torch.arange(16), x)  # page 2 written whole: its stale residual is dropped
    assert (k["data"].data_ptr(), 2) not in c._open
    c.encode_into(k, 16 * 1 + torch.arange(5), x[:5])  # page 1 partial ...
    slab[2] = slab[1]  # ... copied elsewhere: its keys cannot follow, so decoding it is an error, not garbage
    with pytest.raises(RuntimeError, match="partial block"):
        c.decode(k, torch.tensor([2]), torch.float32)
