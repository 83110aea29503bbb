"""Shared fixtures: the real traces under ../shared/data (skipped only where that folder is absent, i.e. a
user's fresh clone without it; with `CI` set, as `.ci/run` sets it, its absence fails the test)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

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


def unavailable(why: str) -> NoReturn:
    """What a test needs is missing here: a skip on a user's machine, a failure in CI (`CI` set), where a skip
    would leave the run green without the test having run."""
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI is set, so this fails instead of skipping", pytrace=False)
    pytest.skip(why)


def need(path: Path) -> Path:
    if not path.exists():
        unavailable(f"{path} not present (shared data lives beside the checkout)")
    return path


@pytest.fixture(scope="session")
def claude_code():
    from agentkv.workload import load_trace

    return load_trace(str(need(CLAUDE_CODE)))


@pytest.fixture(scope="session")
def mooncake():
    from agentkv.workload import load_trace

    return load_trace(str(need(MOONCAKE)))
