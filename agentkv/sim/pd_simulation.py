"""Prefill/decode disaggregation, simulated: a prefill pool of P replicas and a decode pool of D, each running the
same simulator as a colocated fleet, chained by the time each request's KV lands.

1. The prefill pool serves the trace with one output token per request (its prefix cache and router as any
   fleet's): its first token is the request's first token, computed there.
2. The KV goes to a decode replica over the priced link (`disagg.Disaggregated.transfer_seconds`: NVLink where the
   whole fleet sits in one scale-up domain, else the NICs); the user sees the first token when it lands, so
   TTFT = prefill pool (queue + prefill) + transfer.
3. The decode pool serves each request as arriving at that moment with its prompt already computed
   (`SimConfig.prompt_landed`: the prompt's KV is held, not priced), so its steps carry no prefill chunks and
   TPOT is decode steps alone. It holds each prompt whole (no prefix sharing on the decode side: a
   simplification on the cautious side, since sharing would fit more), so its KV room bounds its batch.

Sessions are closed loops: an agent's next request waits for the previous reply's last token. The prefill pass
cannot see the decode pool, so the gap it waits is the agent's think time plus each reply's decode-side time,
first estimated (transfer + an idle decode step per token), then taken from the decode pass and run again
(`rounds`, two by default: the second pass's waits are the first decode pass's, not a fixed point).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from agentkv.sim.disagg import Disaggregated
from agentkv.sim.simulator import SimConfig, SimResult, agent_pauses, simulate
from agentkv.sim.stepcost import decode_seconds
from agentkv.workload.arrivals import ArrivalModel
from agentkv.workload.blocklog import NO_PARENT, BlockLog
from agentkv.workload.trace import Trace


@dataclass(slots=True, frozen=True)
class PDConfig:
    """A disaggregated fleet: `colocated`'s deployment, policy and tiers on `prefill` + `decode` replicas."""

    colocated: SimConfig
    prefill: int
    decode: int
    rounds: int = 2  # prefill/decode passes: the first on an estimate of each reply's decode time

    def __post_init__(self) -> None:
        if self.prefill < 1 or self.decode < 1:
            raise ValueError(f"disaggregated pools need a replica each, got {self.prefill}P + {self.decode}D")
        if self.rounds < 1:
            raise ValueError(f"rounds={self.rounds}: must be >= 1")

    @property
    def link(self) -> Disaggregated:
        d = self.colocated.deployment
        return Disaggregated(d, d, fleet_gpus=(self.prefill + self.decode) * d.tp)

    def prefill_config(self) -> SimConfig:
        return replace(self.colocated, replicas=self.prefill)

    def decode_config(self) -> SimConfig:
        """A whole prompt lands in one step (the budget holds the model's window); nothing is prefix-shared or
        tiered on the decode side, so requests are dealt round-robin (no cache to follow)."""
        c = self.colocated
        return replace(c, replicas=self.decode, prefix_cache=False, dram_bytes=0.0, disk_bytes=0.0, policy="lru",
                       max_batched_tokens=c.deployment.model.context + c.max_num_seqs, prompt_landed=True,
                       router="round-robin", arrival=ArrivalModel("trace"))


def simulate_pd(trace: Trace, pd: PDConfig) -> SimResult:
    """The two pools chained (see the module's docstring), as one result indexed like the trace."""
    transfer = np.array([pd.link.transfer_seconds(int(p)) for p in trace.input_tokens])
    d = pd.colocated.deployment
    after = transfer + np.array([decode_seconds(1, int(p + o // 2), d) * max(int(o) - 1, 0)
                                 for p, o in zip(trace.input_tokens, trace.output_tokens, strict=True)])
    for _ in range(pd.rounds):
        first = simulate(_prefill_trace(trace, after), pd.prefill_config())
        landed = first.first_token + transfer
        going = np.flatnonzero(~first.rejected & (trace.output_tokens > 1))
        if not len(going):  # every reply ends at its first token: the decode pool idles
            return replace(first, first_token=landed, finish=np.where(first.rejected, np.nan, landed),
                           busy_s=np.concatenate([first.busy_s, np.zeros(pd.decode)]),
                           config=replace(pd.colocated, replicas=pd.prefill + pd.decode))
        second = simulate(_decode_trace(trace, going, landed[going]), pd.decode_config())
        finish = landed.copy()
        finish[going] = second.finish + np.nanmin(landed[going])
        after = np.nan_to_num(finish - first.first_token, nan=0.0)
    return _joined(trace, pd, first, second, going, landed, finish, after)


def _prefill_trace(trace: Trace, after: np.ndarray) -> Trace:
    """One output token a request; each next request of a session waits, beyond the agent's own pause, for the
    previous reply's `after` seconds on the decode side."""
    pause = agent_pauses(trace)  # the agent's own pause, as the simulator reads it
    same = np.concatenate([[False], trace.session[1:] == trace.session[:-1]])
    think = np.where(same, pause + np.concatenate([[0.0], after[:-1]]), pause)
    return replace(trace, output_tokens=np.ones_like(trace.output_tokens), think_time=think.astype(np.float32))


def _decode_trace(trace: Trace, going: np.ndarray, landed: np.ndarray) -> Trace:
    """Requests `going` as single-request sessions that start when their KV lands. The landing step (free: see
    `SimConfig.prompt_landed`) re-emits the first token, so the n - 1 after it are n - 1 priced decode steps.
    The decode pool names no blocks (no prefix cache), so they carry no ids: an empty log, not the prompts' own."""
    n = len(going)
    none = np.zeros(n + 1, dtype=np.int64)
    log = BlockLog(np.full(n, NO_PARENT, dtype=np.int64), none[:n].copy(), none, none[:0].copy())
    return replace(
        trace, has_block_ids=False, session_names=[str(i) for i in going.tolist()],
        session_start=landed.astype(np.float64), session_parent=np.full(n, -1, dtype=np.int32),
        session_tenant=trace.session_tenant[trace.session[going]], session=np.arange(n, dtype=np.int32),
        time=np.zeros(n), input_tokens=trace.input_tokens[going], output_tokens=trace.output_tokens[going],
        think_time=np.full(n, np.nan, dtype=np.float32), api_time=np.full(n, np.nan, dtype=np.float32),
        finish=trace.finish[going], block_log=log, model=trace.model[going],
    )


def _joined(trace: Trace, pd: PDConfig, first: SimResult, second: SimResult, going: np.ndarray,
            landed: np.ndarray, finish: np.ndarray, after: np.ndarray) -> SimResult:
    """Arrivals, prefix hits and prefill time from the prefill pass; the first token when the KV lands; the last
    from the decode pass; both pools' replicas (prefill first) in `busy_s`; the agents' own pauses."""
    rejected = first.rejected.copy()
    rejected[going] |= second.rejected
    preempt = first.preemptions.copy()
    preempt[going] += second.preemptions
    served = ~rejected & ~np.isnan(finish)
    same = np.concatenate([[False], trace.session[1:] == trace.session[:-1]])
    pause = first.pause - np.where(same, np.concatenate([[0.0], after[:-1]]), 0.0)
    return replace(
        first, first_token=np.where(rejected, np.nan, landed), finish=np.where(rejected, np.nan, finish),
        output=np.maximum(trace.output_tokens, 1), preemptions=preempt, rejected=rejected,
        busy_s=np.concatenate([first.busy_s, second.busy_s]),
        makespan_s=float(np.nanmax(finish[served]) - np.nanmin(first.arrival)) if served.any() else 0.0,
        decode_s=first.decode_s + second.decode_s + second.prefill_s, cached_s=first.cached_s + second.cached_s,
        transfer_s=first.transfer_s + second.transfer_s, steps=first.steps + second.steps,
        decode_tokens=first.decode_tokens + second.decode_tokens, in_system_s=first.in_system_s + second.in_system_s,
        wall_s=first.wall_s + second.wall_s, config=replace(pd.colocated, replicas=pd.prefill + pd.decode),
        pause=np.maximum(pause, 0.0),
    )
