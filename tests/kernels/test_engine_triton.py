"""The engine on the Triton backend (`LLM(..., attention_backend="triton")`: interpreted on CPU, compiled and
with decode steps in CUDA graphs on CUDA) against the same engine on the torch reference: equal greedy outputs on a tiny Llama-3 checkpoint, with prefix hits, chunked prefill and batched
decodes, on int8 pages (the kernel tests cover every codec)."""

from __future__ import annotations

import pytest
import torch

from agentkv.engine.llm import LLM
from agentkv.engine.sequence import SamplingParams
from tests.engine.conftest import prompts, write_checkpoint

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
GREEDY = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(write_checkpoint(tmp_path_factory.mktemp("llama3-triton"), "llama3", seed=2))


def greedy(folder: str, backend: str, kv_codec: str, kv_cache_bytes: int = 1 << 20) -> list[list[int]]:
    ps = prompts(3, seed=5, lo=9, hi=40)
    ps.append([*ps[0], 11, 12])  # shares the first prompt's whole blocks: a prefill over a cached prefix
    llm = LLM(folder, dtype="float32", device=DEVICE, attention_backend=backend, kv_codec=kv_codec, block_size=8,
              max_num_batched_tokens=32, kv_cache_bytes=kv_cache_bytes)  # chunks of at most 32 tokens
    assert type(llm.backend).__name__ == {"triton": "TritonAttention", "torch": "TorchAttention"}[backend]
    first = llm.generate(ps[:3], GREEDY)
    last = llm.generate(ps[3:], GREEDY)
    assert last[0].num_cached_tokens >= 8
    return [o.outputs[0].token_ids for o in first + last]


@pytest.mark.parametrize("kv_codec", ["int8"])
def test_greedy_outputs_equal_the_reference_backend(folder, kv_codec):
    assert greedy(folder, "triton", kv_codec) == greedy(folder, "torch", kv_codec)


@pytest.mark.parametrize("family", ["gemma3", "gpt_oss", "llama4", "qwen3_next"])
def test_windowed_families_equal_the_reference_backend(tmp_path, family):
    """Sliding windows and sinks (Gemma 3, gpt-oss), chunks (Llama 4), each group's pages through its own
    block tables, the full layers beside DeltaNet state slots (Qwen3-Next): the kernels give the reference's
    greedy outputs."""
    path = str(write_checkpoint(tmp_path / family, family, seed=2))
    assert greedy(path, "triton", "fp32", 1 << 24) == greedy(path, "torch", "fp32", 1 << 24)
