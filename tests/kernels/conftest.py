"""Kernel tests run the Triton kernels compiled on a CUDA machine and in Triton's interpreter elsewhere: the
switch is read when kernels are defined, so it is set here, before any test module imports them."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton", reason="the triton extra is not installed (pip install -e '.[gpu]')")
