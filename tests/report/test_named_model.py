"""A model the user names is placed the way the default one is (fewest GPUs, then the widest weights, that hold
its weights and the longest request's KV), and says so; one that no placement holds is refused in one line.
gpt-oss-120b at bf16 (~234 GB) on one 141 GB H200 had no KV room: every request rejected, TTFT nan."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agentkv.report.ladder import DeploymentSpec
from agentkv.report.models import DEFAULT_MODELS, choose_model, deployment, longest_request
from agentkv.workload.generator import GeneratorConfig, generate


@pytest.fixture(scope="module")
def trace():
    return generate(GeneratorConfig(sessions=2, seed=0))


def test_a_named_model_is_placed_like_the_default_and_says_so(trace):
    spec, why = choose_model(trace, DeploymentSpec(model="gpt-oss-120b"), {"model"})
    d = deployment(spec)
    assert (spec.tp, spec.weight_dtype) != (1, "bf16")  # the catalog's defaults hold no KV for it
    assert d.kv_capacity_bytes >= d.kv_bytes(min(longest_request(trace), 131_072))
    assert why == (f"gpt-oss-120b, as given; {spec.tp} × h200 with {spec.weight_dtype} weights, the fewest GPUs "
                   "(and widest weights) whose memory holds its weights and the longest request's KV")


def test_what_the_user_named_is_kept(trace):
    spec, why = choose_model(trace, DeploymentSpec(model="gpt-oss-120b", tp=4), {"model", "tp"})
    assert (spec.tp, spec.weight_dtype) == (4, "bf16") and "; 4 × h200 as given, with bf16 weights, the widest" in why
    spec, why = choose_model(trace, DeploymentSpec(model="gpt-oss-120b", weight_dtype="bf16"), {"model", "weight_dtype"})
    assert spec.tp == 2 and "; 2 × h200 with bf16 weights (as given), the fewest GPUs whose memory" in why
    given = DeploymentSpec(model="llama-3.1-8b", tp=2, weight_dtype="fp8")
    assert choose_model(trace, given, {"model", "tp", "weight_dtype"}) == (given, "llama-3.1-8b, as given")


def test_the_default_model_is_placed_the_same_way(trace):
    spec, why = choose_model(trace, DeploymentSpec(), set())
    assert spec.model in DEFAULT_MODELS and why.startswith(f"{spec.model}, the first of")
    assert f"{spec.tp} × h200 with {spec.weight_dtype} weights, the fewest GPUs" in why


def test_a_placement_that_cannot_hold_it_is_refused_in_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "agentkv.cli", "report", "--gen-sessions", "2", "--deployment",
                        "model=gpt-oss-120b,tp=1,weight_dtype=bf16", "--out", str(tmp_path / "r.html")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("agentkv: error: --deployment model=gpt-oss-120b, tp=1, weight_dtype=bf16: no "
                               "placement on 1 × h200 with bf16 weights holds its weights (116.8B parameters)")
    assert not (tmp_path / "r.html").exists()
