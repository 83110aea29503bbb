"""Which attention backend an engine runs: `LLM(..., attention_backend=...)` and the CLI's flag come here."""

from __future__ import annotations

import importlib.util
import os

import torch

from agentkv.cli_errors import pip_extra
from agentkv.codecs import KVCodec
from agentkv.kernels.attention import AttentionBackend, TorchAttention

BACKENDS = ("auto", "torch", "triton")


def make_backend(name: str, device: torch.device | str, codec: KVCodec | None = None,
                 head_dim: int = 128) -> AttentionBackend:
    """'torch' (the reference, any device), 'triton' (fused kernels: CUDA, or CPU under TRITON_INTERPRET=1),
    or 'auto': triton on a CUDA device where triton is installed and reads `codec`'s pages of `head_dim`-value
    vectors (the width the model attends over), else the reference."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend '{name}' (known: {', '.join(BACKENDS)})")
    device = torch.device(device)
    have_triton = importlib.util.find_spec("triton") is not None
    why = None
    if codec is not None and have_triton:
        from agentkv.kernels.page_layout import unsupported

        why = unsupported(codec, head_dim)
    if name == "auto":
        name = "triton" if device.type == "cuda" and have_triton and why is None else "torch"
    if name == "torch":
        return TorchAttention()
    if not have_triton:
        raise ValueError(f"attention backend 'triton' needs the triton package: {pip_extra('gpu')}")
    if why:
        raise ValueError(f"attention backend 'triton' (--attention-backend): {why}")
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError(f"attention backend 'triton' needs a CUDA device, not '{device}' "
                         "(TRITON_INTERPRET=1 runs its kernels in the interpreter on CPU, slowly)")
    from agentkv.kernels.triton_attention import TritonAttention

    return TritonAttention()
