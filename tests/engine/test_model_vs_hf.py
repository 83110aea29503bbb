"""Our model's logits against Hugging Face transformers' on the same checkpoint: prefill, decode, and decode
after a prefix-cache hit (paged KV with scattered blocks)."""

from __future__ import annotations

import torch

from agentkv.codecs import get_codec
from agentkv.engine.pages import PageLayout
from agentkv.kernels.attention import SeqSlice
from agentkv.model.loader import load_model
from tests.engine.conftest import hf_model, prompts

ATOL = 1e-4


def paged(model, n_blocks=64, bs=8, codec="fp32"):
    """Every layer's K/V pages, viewed over one slab of n_blocks pages, and the backend bound to it."""
    cfg = model.config
    layout = PageLayout.of(get_codec(codec), cfg.num_layers, bs, cfg.num_kv_heads, cfg.head_dim)
    model.model.layers[0].self_attn.backend.bind(4, n_blocks, torch.device("cpu"))
    return layout.views(torch.zeros(n_blocks, layout.page_bytes, dtype=torch.uint8))


def run(model, caches, tokens, start, table, bs=8):
    """Forward tokens at positions start.. for one sequence whose blocks are `table`."""
    backend = model.model.layers[0].self_attn.backend
    backend.release_row(0)
    meta = backend.prepare([SeqSlice(0, table, len(tokens), start + len(tokens))], int(len(tokens) > 1), bs)
    return model.logits(model(torch.tensor(tokens), torch.arange(start, start + len(tokens)), caches, meta))


def test_prefill_and_decode_logits_match(checkpoint):
    _, folder = checkpoint
    ours, ref = load_model(str(folder), "float32"), hf_model(folder)
    p = prompts(1, seed=3, lo=60, hi=61)[0]
    table = [9, 2, 31, 7, 40, 5, 11, 3, 17, 23]  # blocks scattered through the pool
    caches = paged(ours)
    with torch.no_grad():
        full = ref(torch.tensor([p])).logits[0]
    got = run(ours, caches, p[:50], 0, table)  # prefill the first 50
    assert torch.allclose(got, full[:50], atol=ATOL)
    for i in range(50, 60):  # then decode token by token over the paged cache
        step = run(ours, caches, [p[i]], i, table)
        assert torch.allclose(step[0], full[i], atol=ATOL), i


def test_decode_after_a_prefix_hit(checkpoint):
    """Sequence B reuses A's first 4 blocks (32 tokens) and prefills only its own suffix."""
    _, folder = checkpoint
    ours, ref = load_model(str(folder), "float32"), hf_model(folder)
    a = prompts(1, seed=5, lo=40, hi=41)[0]
    b = a[:32] + prompts(1, seed=6, lo=20, hi=21)[0]
    caches = paged(ours)
    run(ours, caches, a, 0, [4, 8, 15, 16, 23])
    table_b = [4, 8, 15, 16, 42, 43, 44]  # shares the physical blocks of A's prefix
    got = run(ours, caches, b[32:], 32, table_b)
    with torch.no_grad():
        full = ref(torch.tensor([b])).logits[0]
    assert torch.allclose(got, full[32:], atol=ATOL)


def test_bf16_runs_close_to_fp32(checkpoint):
    _, folder = checkpoint
    hi, lo = load_model(str(folder), "float32"), load_model(str(folder), "bfloat16")
    p = prompts(1, seed=8, lo=30, hi=31)[0]
    ch = paged(hi)
    cl = paged(lo, codec="bf16")
    a = run(hi, ch, p, 0, [1, 2, 3, 4])
    b = run(lo, cl, p, 0, [1, 2, 3, 4])
    assert (a - b).abs().max() < 0.1 * a.abs().max()


def test_qwen2_and_mistral_layouts(other_family):
    """Qwen2.5 (biases on q/k/v) and Mistral load and match HF too."""
    ours, ref = load_model(str(other_family), "float32"), hf_model(other_family)
    assert ours.config.qkv_bias == (ours.config.family == "qwen2")
    p = prompts(1, seed=9, lo=30, hi=31)[0]
    got = run(ours, paged(ours), p, 0, [6, 1, 9, 2])
    with torch.no_grad():
        full = ref(torch.tensor([p])).logits[0]
    assert torch.allclose(got, full, atol=ATOL)


def test_online_softmax_over_page_chunks_matches(checkpoint):
    """A tiny element budget forces the reference to attend a few pages at a time with its running softmax
    (the long-context path); logits still match HF in prefill, after a cached prefix, and in decode."""
    _, folder = checkpoint
    ours, ref = load_model(str(folder), "float32"), hf_model(folder)
    ours.model.layers[0].self_attn.backend.budget = 512  # one or two 8-token pages per chunk
    p = prompts(1, seed=12, lo=70, hi=71)[0]
    table = [30, 2, 17, 9, 41, 5, 11, 3, 60, 23]
    caches = paged(ours)
    with torch.no_grad():
        full = ref(torch.tensor([p])).logits[0]
    assert torch.allclose(run(ours, caches, p[:40], 0, table), full[:40], atol=ATOL)
    assert torch.allclose(run(ours, caches, p[40:64], 40, table), full[40:64], atol=ATOL)
    for i in range(64, 70):
        assert torch.allclose(run(ours, caches, [p[i]], i, table)[0], full[i], atol=ATOL), i
