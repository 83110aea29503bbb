"""What a simulation returns: per-request times and cache hits, per-replica busy time, and the attributed totals
the cost model reads (`simulator.Simulator` fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from agentkv.scheduler import Sequence

if TYPE_CHECKING:
    from agentkv.sim.simulator import SimConfig


@dataclass(slots=True)
class SimResult:
    arrival: np.ndarray
    first_token: np.ndarray  # NaN: rejected
    finish: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    cached: np.ndarray  # [R, tiers] prompt tokens served from each tier
    replica: np.ndarray
    preemptions: np.ndarray
    rejected: np.ndarray  # never served: over the model's window, or could never fit in a replica's KV
    over_window: np.ndarray  # of those, over the model's context window (fit the trace first: workload.window)
    busy_s: np.ndarray  # per replica
    makespan_s: float  # first arrival to last reply, the drain of a finite trace included
    offered_s: float  # how long the trace offers load (arrivals.offered_seconds): the window billed
    prefill_s: float  # busy time attributed to uncached input, output, cached input and non-overlapped transfers
    decode_s: float
    cached_s: float  # attention over cached prompt keys (see pricing.attribute)
    transfer_s: float
    steps: int
    prefill_tokens: int  # tokens computed by prefill (cached prefixes excluded; preemption recompute included)
    decode_tokens: int
    in_system_s: float  # ∫ (requests queued or running, over all replicas) dt, from the schedulers' own state
    wall_s: float
    config: SimConfig
    pause: np.ndarray = field(default_factory=lambda: np.zeros(0))  # agent's think before each request (s)
    recorded_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # the trace's service time (NaN: unknown)

    @property
    def served(self) -> np.ndarray:
        return ~self.rejected

    @property
    def ttft(self) -> np.ndarray:
        return (self.first_token - self.arrival)[self.served]

    @property
    def tpot(self) -> np.ndarray:
        ok = self.served & (self.output > 1)
        return (self.finish - self.first_token)[ok] / (self.output[ok] - 1)

    @property
    def e2e(self) -> np.ndarray:
        return (self.finish - self.arrival)[self.served]

    @property
    def output_tps(self) -> np.ndarray:
        """Output tokens per second each request streams after its first token (1 / TPOT)."""
        return 1.0 / np.maximum(self.tpot, 1e-9)

    @property
    def slowdown(self) -> float:
        """How much longer the agents take than they recorded: (think + served turn times) over (think + recorded
        service times), over served requests whose service time the trace records; NaN where none does."""
        known = self.served & ~np.isnan(self.recorded_s) if len(self.recorded_s) else np.zeros(0, dtype=bool)
        if not known.any():
            return float("nan")
        think = float(self.pause[known].sum())
        return (think + float((self.finish - self.arrival)[known].sum())) / max(
            think + float(self.recorded_s[known].sum()), 1e-9)

    @property
    def hit_rate(self) -> float:
        return float(self.cached[self.served].sum()) / max(int(self.prompt[self.served].sum()), 1)

    @property
    def billed_s(self) -> float:
        """Seconds each GPU is paid for: the offered window, or the busiest replica's busy time where the fleet
        could not keep pace with the load."""
        return max(self.offered_s, float(self.busy_s.max(initial=0.0)))

    @property
    def billed(self) -> np.ndarray:
        """Served requests that arrived within the billed window: the tokens its cost is spread over (the drain
        of a finite trace is simulated, for latency, but neither billed nor counted)."""
        t0 = float(self.arrival.min()) if len(self.arrival) else 0.0
        return self.served & (self.arrival - t0 <= self.billed_s)


@dataclass(slots=True)
class Records:
    """What the simulator writes per request as it goes; `SimResult` carries it out."""

    n: int
    tiers: int
    arrival: np.ndarray = field(init=False)
    first_token: np.ndarray = field(init=False)
    finish: np.ndarray = field(init=False)
    cached: np.ndarray = field(init=False)
    replica: np.ndarray = field(init=False)
    preemptions: np.ndarray = field(init=False)
    rejected: np.ndarray = field(init=False)
    over_window: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.arrival = np.full(self.n, np.nan)
        self.first_token = np.full(self.n, np.nan)
        self.finish = np.full(self.n, np.nan)
        self.cached = np.zeros((self.n, self.tiers), dtype=np.int64)
        self.replica = np.full(self.n, -1, dtype=np.int32)
        self.preemptions = np.zeros(self.n, dtype=np.int32)
        self.rejected = np.zeros(self.n, dtype=bool)
        self.over_window = np.zeros(self.n, dtype=bool)

    def record(self, seq: Sequence) -> None:
        i = seq.seq_id
        self.first_token[i] = seq.first_token_time
        self.finish[i] = seq.finish_time
        if len(seq.cached_per_tier):
            self.cached[i, : len(seq.cached_per_tier)] = seq.cached_per_tier
        self.preemptions[i] = seq.preemptions
