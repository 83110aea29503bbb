"""Shared fixtures: the real traces under ../shared/data (skipped only where that folder is absent, i.e. a
user's fresh clone without it; CI always has it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

# `pytest --hypothesis-profile=thorough` for a deeper search than CI's default
settings.register_profile("ci", max_examples=60)
settings.register_profile("thorough", max_examples=500)
settings.load_profile("ci")

try:  # the tests' models are tiny: a second intra-op thread only spins against the other jobs on a 2-core box
    import torch

    torch.set_num_threads(1)
except ImportError:
    pass

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "traces"
CLAUDE_CODE = TRACES / "claude-code"
MOONCAKE = TRACES / "mooncake" / "conversation_trace.jsonl"
AZURE_CODE = TRACES / "azure" / "AzureLLMInferenceTrace_code.csv"
AZURE_CONV = TRACES / "azure" / "AzureLLMInferenceTrace_conv.csv"


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present (shared data lives beside the checkout)")
    return path


@pytest.fixture(scope="session")
def claude_code():
    from agentkv.workload import load_trace

    return load_trace(str(need(CLAUDE_CODE)))


@pytest.fixture(scope="session")
def mooncake():
    from agentkv.workload import load_trace

    return load_trace(str(need(MOONCAKE)))
