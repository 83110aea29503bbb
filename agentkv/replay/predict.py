"""What the policy core predicts the server cached, request by request, for the requests a replay sent.

The prediction replays the requests *as the server saw them*: their prompts cut into the server's blocks (not
the trace's), each full block named by its content as the engine names it, in the order they were sent, through
the same `KVCache` and policy that `agentkv cache sweep` runs, at the server's capacity in blocks. It follows
the engine's rules: only a prompt's full blocks are looked up; the last prompt token is always computed (a
fully cached prompt reports one token less); the reply's full blocks are cached too (they take room, and no
later prompt matches them); a request reserves its partial last block while it runs. Exact when requests run
one at a time (--max-inflight 1); with overlap, requests in flight together see each other's blocks earlier or
later than here.

`as_served` is also written as an agentkv trace, so `agentkv cache sweep as_served.npz --trace-clock` gives
the sweep's own figure for the same requests (it omits reply blocks and the last-token rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from agentkv.kvcache.block_hash import block_hashes
from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.policies import make_policy
from agentkv.kvcache.policy import AccessContext
from agentkv.kvcache.tiers import TierSpec
from agentkv.replay.results import measured
from agentkv.replay.runner import Record
from agentkv.replay.synth import Synth
from agentkv.workload.builder import TraceBuilder
from agentkv.workload.trace import Trace

SCOPE = ("agentkv-replay",)  # one id scope: equal content is equal KV whatever the session


@dataclass(slots=True, frozen=True)
class ServerModel:
    policy: str
    capacity_tokens: int  # the server's GPU KV
    block_size: int

    @property
    def capacity_blocks(self) -> int:
        return self.capacity_tokens // self.block_size

    def describe(self) -> str:
        return f"{self.policy}, {self.capacity_blocks:,} blocks of {self.block_size}"


def as_served(records: list[Record], synth: Synth, overhead: int, block_size: int) -> tuple[Trace, list[Record]]:
    """The measured requests as a trace at the server's block size, and their records in the trace's order."""
    used = sorted((r for r in records if measured(r)), key=lambda r: r.sent)
    if not used:
        raise ValueError("no request came back with usage: nothing to predict")
    src = synth.trace
    b = TraceBuilder(block_size, source=f"replay of {src.source}")
    sessions: dict[str, int] = {}
    head = -np.arange(1, overhead + 1, dtype=np.int64)  # the server's own tokens: the same before every prompt
    for r in used:
        sid = sessions.get(r.session)
        if sid is None:
            sid = sessions[r.session] = b.add_session(r.session, start=0.0, scope=SCOPE)
        tokens = np.concatenate([head, synth.prompt_words(r.request)])
        b.add_request(sid, r.sent, len(tokens), max(r.outcome.completion_tokens, 0), block_hashes(tokens, block_size),
                      api_time=r.outcome.e2e, finish=int(src.finish[r.request]))
    trace = b.build()
    trace.validate()
    by_session = sorted(used, key=lambda r: sessions[r.session])  # stable: each session's stay in sent order
    return trace, by_session


def predict(served: Trace, model: ServerModel) -> np.ndarray:
    """Predicted cached tokens of each request of `served`, replayed in its clock's order."""
    bs = served.block_size
    if model.block_size != bs:
        raise ValueError(f"trace at block size {bs}, server model at {model.block_size}")
    if model.capacity_blocks < 1:
        raise ValueError(f"--capacity {model.capacity_tokens} holds no block of {bs} tokens")
    cache = KVCache([TierSpec("gpu", model.capacity_blocks, 1)], make_policy(model.policy, block_size=bs))
    order = np.argsort(served.time, kind="stable")
    fresh = served.n_block_ids  # ids for reply blocks: content no prompt repeats
    out = np.zeros(served.n_requests, dtype=np.int64)
    for rank, i in enumerate(order.tolist()):
        ids, n_in, n_out = served.blocks(i), int(served.input_tokens[i]), int(served.output_tokens[i])
        now = float(served.time[i])
        ctx = AccessContext(now, session=int(served.session[i]), request=rank, finish=int(served.finish[i]),
                            output_tokens=n_out)
        written = n_in + max(n_out, 1) - 1  # the last reply token is sampled, never written
        grant = cache.acquire(rank, ids, -(-written // bs), ctx)
        if grant is None:  # longer than the whole cache: the server refuses it too
            continue
        out[i] = min(grant.hit_blocks * bs, n_in - 1)
        n_reply = written // bs - len(ids)
        cache.commit(rank, np.concatenate([ids[grant.hit_blocks :], np.arange(fresh, fresh + n_reply)]), now)
        fresh += n_reply
        ctx.now = now + float(np.nan_to_num(served.api_time[i]))
        cache.release(rank, ctx)
    return out
