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


def test_group_scales_within_the_latent_key_are_refused_at_start_up(tmp_path, monkeypatch, capsys):
    """int4-g16 keeps a scale per 16 values of the 48-value latent + RoPE key, which the kernels cannot tile (not
    a power of two): the engine and the CLI refuse `--attention-backend triton` at start-up in one line naming
    both flags, not at the first decode; 'auto' takes the torch backend; a 64-value head is accepted."""
    from agentkv.cli import main
    from agentkv.codecs import get_codec
    from agentkv.kernels.attention import TorchAttention
    from agentkv.kernels.backends import make_backend

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # so that the refusal is the codec's, not the device's
    folder = str(write_checkpoint(tmp_path / "dsv3", "deepseek_v3", seed=2))
    why = r"'triton' \(--attention-backend\): KV codec int4-g16 \(--kv-codec\) .* 48-value vector"
    with pytest.raises(ValueError, match=why):
        LLM(folder, dtype="float32", device="cpu", kv_codec="int4-g16", block_size=8, kv_cache_bytes=2**22,
            attention_backend="triton")
    llm = LLM(folder, dtype="float32", device="cpu", kv_codec="int4-g16", block_size=8, kv_cache_bytes=2**22)
    assert isinstance(llm.backend, TorchAttention)
    assert make_backend("auto", "cuda", get_codec("int4-g16"), 48).__class__ is TorchAttention
    assert make_backend("triton", "cpu", get_codec("int4-g16"), 64).__class__ is not TorchAttention
    capsys.readouterr()
    argv = ["generate", "--model", folder, "--prompt", "the agent reads", "--max-tokens", "2", "--device", "cpu",
            "--kv-codec", "int4-g16", "--attention-backend", "triton"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "int4-g16 (--kv-codec)" in err and "--attention-backend torch" in err
