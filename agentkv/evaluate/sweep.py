"""`agentkv cache sweep`: replay a trace through every (policy, capacity) point and tabulate what each buys.

Capacities are the GPU tier's; lower tiers are given absolutely (`dram=2M`, `dram=64GiB`) or as multiples of
the GPU tier (`dram=8x`). Belady (offline, same tiers) and an infinite cache are always computed as the
references a plot needs.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from agentkv.catalog import ModelSpec
from agentkv.cluster.tasks import run_points
from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.policies import NAMES as POLICY_NAMES
from agentkv.kvcache.policies import make_policy
from agentkv.kvcache.replay import ReplayResult, reference_stream, replay
from agentkv.kvcache.sizing import CodecSpec, kv_bytes_per_block, kv_bytes_per_token
from agentkv.kvcache.tiers import TIER_NAMES, Size, TierEntry, TierSpec, parse_size, parse_tier_list
from agentkv.workload.arrivals import ArrivalModel, place, replay_order
from agentkv.workload.stats import infinite_cache_hits
from agentkv.workload.trace import Trace


def parse_lower_tiers(text: str | None) -> list[TierEntry]:
    """`dram=8x,disk=1TiB` → lower tiers (the GPU tier comes from --capacity); the engine's syntax, without
    locations."""
    tiers = parse_tier_list(text, "--tiers", TIER_NAMES[1:], multiples=True,
                            about=" (the tiers below the GPU; the GPU tier is --capacity)") if text else []
    for t in tiers:
        if t.location is not None:
            raise ValueError(f"--tiers: {t.written!r}: a simulated tier takes no @LOCATION")
    return tiers


@dataclass(slots=True)
class SweepPoint:
    policy: str
    gpu: Size
    result: ReplayResult


def tier_specs(gpu: Size, lower: list[TierEntry], model: ModelSpec, codec: CodecSpec, block_size: int) -> list[TierSpec]:
    per_token = kv_bytes_per_token(model, codec)
    block = kv_bytes_per_block(model, codec, block_size)
    gpu_bytes = gpu.to_bytes(per_token)
    specs = [TierSpec("gpu", gpu_bytes, block)]
    for t in lower:
        size = t.size.to_bytes(per_token) if t.size else t.times_gpu * gpu_bytes
        specs.append(TierSpec(t.name, size, block))
    return specs


def sweep(
    trace: Trace,
    policies: list[str],
    capacities: list[Size],
    lower: list[TierEntry],
    arrival: ArrivalModel,
    model: ModelSpec,
    codec: CodecSpec,
    write_through: bool = False,
    progress: Callable[[str], None] | None = None,
    ray: str | None = None,
) -> tuple[list[SweepPoint], float]:
    """Every (policy, capacity) point, plus Belady at each capacity; returns them and the infinite-cache hit rate.
    Points run here one after another, or as tasks on the Ray cluster at `ray` ("local": one started here)."""
    trace, arrivals = place(trace, arrival)  # as served: later laps of a wrapped session are copies
    order = replay_order(arrivals)
    names = [p for p in policies if p != "infinite"]
    if "belady" not in names:
        names.append("belady")
    labels, jobs = [], []
    for gpu in capacities:
        specs = tier_specs(gpu, lower, model, codec, trace.block_size)
        if specs[0].capacity_blocks < 1:
            raise ValueError(f"capacity {gpu} holds no {trace.block_size}-token block of {model.name} KV")
        labels += [(name, gpu) for name in names]
        jobs += [(name, specs, model, write_through) for name in names]
    done = {}
    for k, res in run_points(_point, jobs, ray, _share, (trace, arrivals, order)):
        done[k] = res
        if progress:
            progress(f"{labels[k][0]} @ {labels[k][1]}")
    points = [SweepPoint(name, gpu, done[k]) for k, (name, gpu) in enumerate(labels)]
    hits = infinite_cache_hits(trace, order, per_session=False)
    infinite = float(hits.sum()) / max(int(trace.input_tokens.sum()), 1)
    return points, infinite


_SHARED: dict[str, object] = {}  # what every point replays, set once per process (or Ray worker)


def _share(trace: Trace, arrivals: np.ndarray, order: np.ndarray) -> None:
    _SHARED.update(trace=trace, arrivals=arrivals, order=order)


def _point(name: str, specs: list[TierSpec], model: ModelSpec, write_through: bool) -> ReplayResult:
    trace, arrivals, order = _SHARED["trace"], _SHARED["arrivals"], _SHARED["order"]
    stream = reference_stream(trace, order, specs[0].capacity_blocks)
    policy = make_policy(name, stream, model, trace.block_size)
    return replay(trace, order, arrivals, KVCache(specs, policy, write_through), stream)


def rows(points: list[SweepPoint]) -> list[dict[str, object]]:
    out = []
    for p in points:
        r = p.result
        moved = r.bytes_moved()
        row: dict[str, object] = {
            "policy": p.policy,
            "gpu_capacity": str(p.gpu),
            "gpu_capacity_tokens": r.capacity_tokens[0],
            "tiers": "+".join(r.tiers),
            "hit_rate": round(r.hit_rate, 6),
        }
        for name, share in zip(r.tiers, r.hit_rate_per_tier, strict=True):
            row[f"hit_rate_{name}"] = round(float(share), 6)
        row.update({
            "recomputed_tokens": r.recomputed_tokens,
            "promoted_GiB": round(moved["promoted"] / 2**30, 3),
            "demoted_GiB": round(moved["demoted"] / 2**30, 3),
            "dropped_GiB": round(moved["dropped"] / 2**30, 3),
            "written_GiB": round(moved["written"] / 2**30, 3),
            "prefetched_blocks": r.prefetched_blocks,
            "seconds": round(r.seconds, 3),
        })
        out.append(row)
    return out


def write_csv(points: list[SweepPoint], path: str) -> None:
    table = rows(points)
    fields = list(dict.fromkeys(k for row in table for k in row))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(table)


def write_json(points: list[SweepPoint], infinite: float, meta: dict[str, object], path: str) -> None:
    with open(path, "w") as f:
        json.dump({**meta, "infinite_hit_rate": infinite, "points": rows(points)}, f, indent=1)


def gap_closed(points: list[SweepPoint], policy: str, baseline: str = "lru") -> dict[str, float]:
    """Per capacity: the share of the baseline→Belady gap that `policy` closes."""
    by = {(p.policy, str(p.gpu)): p.result.hit_rate for p in points}
    out = {}
    for cap in dict.fromkeys(str(p.gpu) for p in points):
        lo, hi, x = by.get((baseline, cap)), by.get(("belady", cap)), by.get((policy, cap))
        if lo is not None and hi is not None and x is not None and hi > lo:
            out[cap] = (x - lo) / (hi - lo)
    return out


def summary_lines(points: list[SweepPoint], infinite: float) -> list[str]:
    """The infinite-cache ceiling, and per online policy the share of the LRU→Belady gap it closes. Belady
    bounds online policies only on a GPU-only cache (with lower tiers, prefetching can beat it), so a tiered
    sweep reports recompute saved against LRU instead."""
    lines = [f"infinite cache: {100 * infinite:.1f}%"]
    tiered = any(len(p.result.tiers) > 1 for p in points)
    lru = {str(p.gpu): p.result for p in points if p.policy == "lru"}
    for policy in dict.fromkeys(p.policy for p in points):
        if policy in ("lru", "belady"):
            continue
        if not tiered:
            for cap, g in gap_closed(points, policy).items():
                lines.append(f"{policy} @ {cap}: closes {100 * g:.0f}% of the LRU→Belady gap")
            continue
        for p in (p for p in points if p.policy == policy and str(p.gpu) in lru):
            base = lru[str(p.gpu)].recomputed_tokens
            change = p.result.recomputed_tokens / base - 1 if base else 0.0
            lines.append(f"{policy} @ {p.gpu}: recomputes {100 * change:+.1f}% vs LRU; "
                         f"{100 * p.result.hit_rate_per_tier[0]:.1f}% of tokens hit in the GPU tier "
                         f"(LRU {100 * lru[str(p.gpu)].hit_rate_per_tier[0]:.1f}%)")
    return lines


def policies_arg(text: str) -> list[str]:
    """--policy's names, checked before any work."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in names if p not in POLICY_NAMES]
    if unknown or not names:
        raise ValueError(f"--policy: unknown policy {', '.join(map(repr, unknown)) or '(none given)'} "
                         f"(policies: {', '.join(POLICY_NAMES)})")
    return names


def capacities_arg(text: str) -> list[Size]:
    try:
        sizes = [parse_size(c) for c in text.split(",") if c.strip()]
    except ValueError as e:
        raise ValueError(f"--capacity: {e}") from None
    if not sizes:
        raise ValueError("--capacity: give at least one size")
    return sorted(sizes, key=lambda s: (s.is_bytes, s.value))

