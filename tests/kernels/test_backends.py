"""Backend selection: what `LLM(..., attention_backend=...)` gets on this machine, and clear refusals."""

from __future__ import annotations

import pytest
import torch

from agentkv.codecs import get_codec
from agentkv.kernels.attention import TorchAttention
from agentkv.kernels.backends import make_backend
from agentkv.kernels.triton_attention import TritonAttention


def test_auto_is_triton_on_cuda_and_the_reference_elsewhere():
    assert isinstance(make_backend("auto", "cpu"), TorchAttention)
    assert isinstance(make_backend("torch", "cpu"), TorchAttention)
    if torch.cuda.is_available():
        assert isinstance(make_backend("auto", "cuda"), TritonAttention)
        assert isinstance(make_backend("auto", "cuda", get_codec("int4-kivi")), TorchAttention)


def test_triton_forced_on_cpu_runs_in_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert isinstance(make_backend("triton", "cpu", get_codec("int4")), TritonAttention)
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        make_backend("triton", "cpu")


def test_bad_choices_say_why():
    with pytest.raises(ValueError, match=r"unknown attention backend 'flash'.*auto, torch, triton"):
        make_backend("flash", "cpu")
    with pytest.raises(ValueError, match=r"int4-kivi.*torch attention backend"):
        make_backend("triton", "cpu", get_codec("int4-kivi"))


def test_cli_flag_forces_a_backend_or_says_why(tmp_path, monkeypatch, capsys):
    from agentkv.cli import main
    from tests.engine.conftest import write_checkpoint

    folder = str(write_checkpoint(tmp_path / "ckpt", "llama3"))
    base = ["generate", "--model", folder, "--prompt", "the agent reads", "--max-tokens", "2", "--device", "cpu"]
    assert main([*base, "--attention-backend", "torch"]) == 0
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    capsys.readouterr()
    assert main([*base, "--attention-backend", "triton"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs a CUDA device" in err and len(err.splitlines()) == 1
