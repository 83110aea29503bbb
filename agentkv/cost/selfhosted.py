"""Self-hosted $/Mtok: the GPU-hours a simulated deployment holds, split over the tokens it served.

The deployment pays for every GPU over the window the trace offers as load (`SimResult.billed_s`), spread over
the tokens of the requests that arrived in it, not over the makespan: a finite trace ends in a drain (one
Claude Code session returns 122 h after it began) that would bill an idle fleet. Busy time is attributed to
uncached input, output and cached input by the simulator (`sim/pricing.attribute`): token-proportional work to the
step's new tokens, attention to the keys it reads, so cached input carries the attention over its KV and the
transfers that brought it to the GPU. Idle time is its own line (`usd_per_mtok_idle`, over all tokens), not
folded into the parts: a part-idle fleet would otherwise show output at tens of $/Mtok beside cents of input.
HBM holding cached KV costs nothing extra here: its price is in how many GPUs the load needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentkv.sim.simulator import SimResult


@dataclass(slots=True, frozen=True)
class GpuRates:
    """$ per GPU-hour on demand: public rates for one GPU differ 2-4x by kind of provider."""

    low: float  # marketplaces, long-tail clouds
    typical: float  # specialty GPU clouds: what the report prices at
    hyperscaler: float

    @staticmethod
    def of(table: dict, hardware: str) -> GpuRates:
        """From prices.toml's [gpu_hour]: a {low, typical, hyperscaler} table, or one number (no range)."""
        entry = table.get(hardware)
        if isinstance(entry, int | float) and not isinstance(entry, bool):
            entry = {"low": entry, "typical": entry, "hyperscaler": entry}
        if not isinstance(entry, dict):
            raise ValueError(f"prices: no gpu_hour price for hardware '{hardware}'")
        rates = [entry.get(k) for k in ("low", "typical", "hyperscaler")]
        if not all(isinstance(r, int | float) and r > 0 for r in rates) or not rates[0] <= rates[1] <= rates[2]:
            raise ValueError(f"prices: gpu_hour '{hardware}' needs 0 < low <= typical <= hyperscaler, got {entry}")
        return GpuRates(*(float(r) for r in rates))


@dataclass(slots=True, frozen=True)
class SelfHostedCost:
    gpus: int
    gpu_hours: float
    usd: float
    usd_per_mtok_input: float  # uncached prompt tokens: the GPU time spent on them
    usd_per_mtok_cached: float  # prompt tokens served from the cache
    usd_per_mtok_output: float
    usd_per_mtok_blended: float  # all tokens, in and out: every GPU-hour billed
    usd_per_mtok_idle: float = 0.0  # the GPU-hours no step ran, over all tokens
    utilisation: float = 0.0  # busy GPU time / billed GPU time


def self_hosted_cost(res: SimResult, usd_per_gpu_hour: float) -> SelfHostedCost:
    d = res.config.deployment
    gpus = res.config.replicas * d.tp
    hours = gpus * res.billed_s / 3600.0
    usd = hours * usd_per_gpu_hour
    served = res.billed
    cached = float(res.cached[served].sum())
    uncached = float(res.prompt[served].sum()) - cached
    output = float(res.output[served].sum())
    billed_replica_s = res.config.replicas * res.billed_s
    worked = res.prefill_s + res.decode_s + res.cached_s + res.transfer_s
    util = min(worked / billed_replica_s, 1.0) if billed_replica_s > 0 else 0.0  # the drain's work is not billed
    share = (lambda part: usd * util * part / worked) if worked > 0 else (lambda part: 0.0)  # parts + idle = usd

    def per_mtok(part_usd: float, tokens: float) -> float:
        return part_usd / (tokens / 1e6) if tokens > 0 else 0.0

    return SelfHostedCost(
        gpus=gpus,
        gpu_hours=hours,
        usd=usd,
        usd_per_mtok_input=per_mtok(share(res.prefill_s), uncached),
        usd_per_mtok_cached=per_mtok(share(res.cached_s + res.transfer_s), cached),
        usd_per_mtok_output=per_mtok(share(res.decode_s), output),
        usd_per_mtok_blended=per_mtok(usd, uncached + cached + output),
        usd_per_mtok_idle=per_mtok(usd * (1 - util), uncached + cached + output),
        utilisation=util,
    )
