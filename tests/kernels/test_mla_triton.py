"""DeepSeek-V3's absorbed decode through the Triton kernels (compiled on CUDA, interpreted elsewhere): every
head attends the latent pages as one shared key of latent + RoPE values (48 here: not a power of two), with
the same pages read back as the value; greedy continuations equal the torch reference backend's."""

from __future__ import annotations

import pytest
import torch

from agentkv.engine.llm import LLM
from agentkv.engine.sequence import SamplingParams
from tests.engine.conftest import prompts, write_checkpoint


@pytest.mark.parametrize("name", ["fp32", "fp8"])
def test_absorbed_decode_on_triton_equals_the_reference(tmp_path, name):
    folder = str(write_checkpoint(tmp_path / "dsv3", "deepseek_v3", seed=2))
    ps = prompts(3, seed=5, lo=12, hi=30)
    greedy = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runs = []
    for backend in ("torch", "triton"):
        llm = LLM(folder, dtype="float32", device=device, kv_codec=name, block_size=8, kv_cache_bytes=2**22,
                  attention_backend=backend, cuda_graphs=False)
        runs.append([o.outputs[0].token_ids for o in llm.generate(ps, greedy)])
    assert runs[0] == runs[1]
