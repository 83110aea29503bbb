"""The mitigation ladder: each lever added to the one before, the deployment sized to the load each time.

baseline (no prefix cache, bf16 KV, naive attention) → +IO-aware attention → +prefix cache in HBM (LRU) →
+fp8 KV → +int4 KV → +DRAM tier → +disk tier → +agent-aware policy.

For every rung the simulator finds the fewest replicas whose TTFT (at the SLO's percentile) meets the SLO
under the offered load; figures are read at that size. Where no size can meet it (requests miss it on an
idle replica), the rung gets the fewest replicas within 25% of the TTFT that adding replicas converges to,
and is flagged.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from agentkv.catalog import hardware, model
from agentkv.cost.selfhosted import SelfHostedCost, self_hosted_cost
from agentkv.kvcache.sizing import codec
from agentkv.sim.simulator import SimConfig, SimResult, simulate
from agentkv.sim.stepcost import Deployment, prefill_seconds
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.trace import Trace

QUEUEING_SLACK = 0.25  # where the SLO is unreachable: TTFT may be this much above what more replicas reach


@dataclass(slots=True, frozen=True)
class DeploymentSpec:
    """The modelled deployment the ladder starts from (catalog names, editable from the CLI)."""

    hardware: str = "h200"
    model: str = "llama-3.1-8b"
    tp: int = 1
    weight_dtype: str = "bf16"
    router: str = "prefix-aware"
    dram_gb: float = 0.0  # per replica; 0: half the host DRAM the hardware has per device × tp
    disk_gb: float = 2000.0  # per replica
    slo_ttft_s: float = 20.0
    slo_quantile: float = 90.0
    max_replicas: int = 512
    hardware_file: str | None = None
    models_file: str | None = None


@dataclass(slots=True, frozen=True)
class Rung:
    name: str
    attention: str
    prefix_cache: bool
    codec: str
    policy: str
    dram: bool
    disk: bool


LADDER = (
    Rung("baseline", "naive", False, "bf16", "lru", False, False),
    Rung("+IO-aware attention", "flash", False, "bf16", "lru", False, False),
    Rung("+prefix cache (HBM)", "flash", True, "bf16", "lru", False, False),
    Rung("+fp8 KV", "flash", True, "fp8", "lru", False, False),
    Rung("+int4 KV", "flash", True, "int4", "lru", False, False),
    Rung("+DRAM tier", "flash", True, "int4", "lru", True, False),
    Rung("+disk tier", "flash", True, "int4", "lru", True, True),
    Rung("+agent-aware policy", "flash", True, "int4", "agent", True, True),
)


@dataclass(slots=True)
class RungResult:
    rung: Rung
    replicas: int
    slo_met: bool
    result: SimResult
    cost: SelfHostedCost
    tried: list[tuple[int, float]] = field(default_factory=list)  # (replicas, TTFT at the SLO percentile)

    @property
    def row(self) -> dict[str, object]:
        r = self.result
        ttft, tpot = r.ttft, r.tpot
        gpus = self.cost.gpus
        tokens = float(r.prompt[r.served].sum() + r.output[r.served].sum())
        return {
            "lever": self.rung.name,
            "hit_rate": r.hit_rate,
            "ttft_p50_s": _q(ttft, 50),
            "ttft_p99_s": _q(ttft, 99),
            "tpot_p50_ms": 1e3 * _q(tpot, 50),
            "tok_s_per_gpu": tokens / max(r.makespan_s * gpus, 1e-9),
            "gpus": gpus,
            "slo_met": self.slo_met,
            "usd_per_mtok": self.cost.usd_per_mtok_blended,
            "usd_per_mtok_input": self.cost.usd_per_mtok_input,
            "usd_per_mtok_output": self.cost.usd_per_mtok_output,
            "rejected": int(r.rejected.sum()),
            "preempted": int(r.preemptions.sum()),
        }


def _q(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else float("nan")


def rung_config(spec: DeploymentSpec, rung: Rung, arrival: ArrivalModel, replicas: int) -> SimConfig:
    hw = hardware(spec.hardware, spec.hardware_file)
    d = Deployment(hw, model(spec.model, spec.models_file), codec(rung.codec), tp=spec.tp,
                   weight_dtype=spec.weight_dtype, attention=rung.attention)
    dram = (spec.dram_gb * 1e9 if spec.dram_gb else 0.5 * hw.dram_bytes * spec.tp) if rung.dram else 0.0
    return SimConfig(d, replicas=replicas, policy=rung.policy, prefix_cache=rung.prefix_cache, dram_bytes=dram,
                     disk_bytes=spec.disk_gb * 1e9 if rung.disk else 0.0, router=spec.router, arrival=arrival)


def size_rung(trace: Trace, spec: DeploymentSpec, rung: Rung, arrival: ArrivalModel, usd_per_gpu_hour: float,
              start: int = 4, max_runs: int = 6) -> RungResult:
    """Fewest replicas meeting the TTFT SLO, each candidate a full simulation. Where none within the budget
    does (the SLO is below what requests take on an idle replica, or out of reach), the fewest replicas whose
    TTFT is within QUEUEING_SLACK of where more replicas stop helping: sized for the load, flagged as missing."""
    runs: dict[int, SimResult] = {}
    tried: list[tuple[int, float]] = []

    def ttft(r: int) -> float:
        if r not in runs:
            runs[r] = simulate(trace, rung_config(spec, rung, arrival, r))
            tried.append((r, _q(runs[r].ttft, spec.slo_quantile)))
        return _q(runs[r].ttft, spec.slo_quantile)

    def smallest(limit: float, r: int, lo: int, budget: int) -> int | None:
        """Double r until TTFT meets `limit`, then bisect down to the fewest replicas that do (more replicas
        also means more cache, so even an idle-looking deployment can get faster). None: out of budget."""
        stop = len(runs) + budget
        while ttft(r) > limit:
            if r >= spec.max_replicas or len(runs) >= stop:
                return None
            lo, r = r, min(spec.max_replicas, 2 * r)
        while r - lo > 1 and len(runs) < stop:
            mid = (lo + r) // 2
            r, lo = (mid, lo) if ttft(mid) <= limit else (r, mid)
        return r

    def result(r: int, met: bool) -> RungResult:
        return RungResult(rung, r, met, runs[r], self_hosted_cost(runs[r], usd_per_gpu_hour), tried)

    reachable = True
    if not rung.prefix_cache:  # without a cache TTFT >= the request's own prefill: a floor no size lowers
        cfg = rung_config(spec, rung, arrival, 1)
        prompt = int(np.percentile(trace.input_tokens, spec.slo_quantile))
        reachable = prefill_seconds(prompt, cfg.deployment, cfg.max_batched_tokens) <= spec.slo_ttft_s
    if reachable:
        r = smallest(spec.slo_ttft_s, start, 0, max_runs)
        if r is not None:
            return result(r, True)
    # unreachable: find where more replicas stop helping (TTFT falls < 20% on doubling), then the fewest
    # replicas within the slack of that TTFT
    ref = max(runs, default=start)
    stop = len(runs) + max_runs
    while ref < spec.max_replicas and len(runs) < stop and ttft(min(2 * ref, spec.max_replicas)) < 0.8 * ttft(ref):
        ref = min(2 * ref, spec.max_replicas)
    best = smallest((1.0 + QUEUEING_SLACK) * ttft(ref), ref, 0, max_runs)
    return result(best if best is not None else ref, False)


def _one(args: tuple) -> RungResult:
    return size_rung(*args)


def run_ladder(trace: Trace, spec: DeploymentSpec, arrival: ArrivalModel, usd_per_gpu_hour: float,
               rungs: tuple[Rung, ...] = LADDER, workers: int = 2, on_done=None) -> list[RungResult]:
    """Every rung, sized; rungs run in `workers` processes (each rung is independent)."""
    jobs = [(trace, spec, r, arrival, usd_per_gpu_hour) for r in rungs]
    if workers <= 1:
        out = []
        for j in jobs:
            out.append(_one(j))
            if on_done:
                on_done(out[-1])
        return out
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_one, j) for j in jobs]
        out = []
        for f in futures:
            out.append(f.result())
            if on_done:
                on_done(out[-1])
        return out

