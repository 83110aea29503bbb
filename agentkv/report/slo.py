"""The service-level objective a deployment is sized to, and the one test of it every view uses.

A user states any of: TTFT, output speed (tokens/s per request, or its inverse TPOT) and end-to-end turn time,
all at one percentile of requests; and how much slower than the trace recorded the agents may run. Output speed
is what agents feel on long replies and what fast tiers sell, so a TTFT-only SLO accepts a saturated fleet
whose replies crawl. `meets_slo` is the single predicate: capacity, sizing and every "SLO met" column call it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from agentkv.report.ladder import DeploymentSpec
    from agentkv.sim.simulator import SimResult

# Default output speed: 90% of requests stream at least this fast. What coding agents' users get today from the
# APIs they run on: Claude Sonnet 4.5 63 tok/s and Opus 4.1 45 tok/s median (Artificial Analysis, as cited at
# lattice.uptownhr.com/claude-opus-4-5/speed-analysis, 2025-11-24); 21-44 tok/s across the Claude models in
# deploybase.ai/articles/claude-api-pricing (as of 2026-03-21). 30 tok/s at the 90th percentile sits inside that
# range: a fleet meeting it streams its slowest tenth of replies about as fast as a typical API reply.
DEFAULT_OUTPUT_TPS = 30.0
# Default tolerance on the agents' pace: their sessions (think time plus turn times) take at most this many times
# what the trace recorded (a stated tolerance, not a published figure).
DEFAULT_SLOWDOWN = 1.2


def _quantile(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else float("nan")


def tpot_limit_ms(spec: DeploymentSpec) -> float:
    """The TPOT the SLO allows (ms): slo_tpot_ms where given (it is the same bound as slo_output_tps, stated the
    other way, so it replaces it), else 1000 / slo_output_tps; 0: no output-speed bound."""
    if spec.slo_tpot_ms:
        return spec.slo_tpot_ms
    return 1e3 / spec.slo_output_tps if spec.slo_output_tps else 0.0


def slo_misses(res: SimResult, spec: DeploymentSpec) -> list[str]:
    """Each part of the SLO `res` misses, in words ([] : met). A percentile of nothing served is a miss."""
    q, out = spec.slo_quantile, []
    ttft = _quantile(res.ttft, q)
    if not ttft <= spec.slo_ttft_s:
        out.append(f"p{q:g} TTFT {ttft:.1f} s > {spec.slo_ttft_s:g} s")
    tpot = tpot_limit_ms(spec)
    if tpot:
        got = 1e3 * _quantile(res.tpot, q)
        if got > tpot:
            out.append(f"p{q:g} output speed {1e3 / got:.0f} tok/s < {1e3 / tpot:.0f} tok/s")
    if spec.slo_e2e_s:
        e2e = _quantile(res.e2e, q)
        if not e2e <= spec.slo_e2e_s:
            out.append(f"p{q:g} turn time {e2e:.1f} s > {spec.slo_e2e_s:g} s")
    slow = res.slowdown
    if spec.slo_slowdown and slow > spec.slo_slowdown:  # NaN (no recorded service time) cannot be checked
        out.append(f"agents run {slow:.2f}x slower than recorded > {spec.slo_slowdown:g}x")
    return out


def meets_slo(res: SimResult, spec: DeploymentSpec) -> bool:
    return not slo_misses(res, spec)


def describe_slo(spec: DeploymentSpec) -> str:
    q = spec.slo_quantile
    parts = [f"p{q:g} TTFT ≤ {spec.slo_ttft_s:g} s"]
    tpot = tpot_limit_ms(spec)
    if tpot:
        parts.append(f"p{q:g} output ≥ {1e3 / tpot:.3g} tok/s (TPOT ≤ {tpot:.3g} ms)")
    if spec.slo_e2e_s:
        parts.append(f"p{q:g} turn ≤ {spec.slo_e2e_s:g} s")
    if spec.slo_slowdown:
        parts.append(f"agents ≤ {spec.slo_slowdown:g}x their recorded pace")
    return ", ".join(parts)


def slo_achieved(res: SimResult, spec: DeploymentSpec) -> str:
    """What `res` achieves on each bound the SLO sets, in words."""
    q = spec.slo_quantile
    parts = [f"p{q:g} TTFT {_quantile(res.ttft, q):.1f} s"]
    if tpot_limit_ms(spec):
        parts.append(f"p{q:g} output {1.0 / _quantile(res.tpot, q):.0f} tok/s")
    if spec.slo_e2e_s:
        parts.append(f"p{q:g} turn {_quantile(res.e2e, q):.1f} s")
    if spec.slo_slowdown and res.slowdown == res.slowdown:
        parts.append(f"agents at {res.slowdown:.2f}x their recorded pace")
    return ", ".join(parts)
