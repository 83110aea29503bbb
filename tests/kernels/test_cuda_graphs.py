"""Decode steps through the CUDA-graph runner's padded static buffers (eager on CPU, in Triton's interpreter;
captured on CUDA) give the hidden states of the plain forward, and write the same K/V to the same slots: the
padding rows repeat row 0 and write nowhere else."""

from __future__ import annotations

import torch

from agentkv.codecs import get_codec
from agentkv.engine.cuda_graphs import DecodeGraphs
from agentkv.engine.pages import PageLayout
from agentkv.kernels.attention import SeqSlice
from agentkv.kernels.triton_attention import TritonAttention
from agentkv.model.config import ModelConfig
from agentkv.model.llama import LlamaForCausalLM

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
RAW = dict(architectures=["LlamaForCausalLM"], vocab_size=64, hidden_size=32, intermediate_size=64,
           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)


def test_padded_decode_equals_the_plain_forward():
    torch.manual_seed(0)
    cfg = ModelConfig.from_hf(RAW)
    backend = TritonAttention()
    model = LlamaForCausalLM(cfg, backend).to(DEVICE).eval()
    block, num_pages = 4, 24
    layout = PageLayout.of(get_codec("fp32"), cfg.num_layers, block, cfg.num_kv_heads, cfg.head_dim)
    slab = torch.randn(num_pages, layout.page_bytes // 4, device=DEVICE).view(torch.uint8)  # a filled cache
    twin = slab.clone()
    lens = [9, 3, 14]  # contexts after this step (pages scattered)
    pages = [[5, 17, 2], [11], [0, 21, 8, 13]]
    backend.bind(4, 8, DEVICE)
    meta = backend.prepare([SeqSlice(i, p, 1, n) for i, (p, n) in enumerate(zip(pages, lens, strict=True))], 0,
                           block)
    ids = torch.tensor([7, 30, 51], device=DEVICE)
    pos = torch.tensor([n - 1 for n in lens], device=DEVICE)
    plain = model(ids, pos, layout.views(slab), meta)
    graphs = DecodeGraphs(model.forward, layout.views(twin), backend, max_batch=4, max_pages=8, block_size=block,
                          kv_heads=cfg.num_kv_heads, device=DEVICE)
    assert graphs.sizes == [1, 2, 4] and graphs.size_for(3) == 4
    if DEVICE.type == "cuda":
        graphs.capture()
    padded = graphs.run(ids, pos, meta)
    assert padded.shape == plain.shape
    torch.testing.assert_close(padded, plain, rtol=1e-5, atol=1e-5)
    written = (meta.slot_mapping // block).tolist()
    others = [p for p in range(num_pages) if p not in written]
    assert torch.equal(slab[others], twin[others])  # the padding rows wrote nowhere else
    for a, b in zip(layout.views(slab), layout.views(twin), strict=True):  # and what row 0 wrote (up to the
        torch.testing.assert_close(a.k["data"][written], b.k["data"][written])  # batch size's GEMM rounding)
        torch.testing.assert_close(a.v["data"][written], b.v["data"][written])
