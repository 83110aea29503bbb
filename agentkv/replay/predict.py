"""What the policy core predicts the server cached, request by request, for the requests a replay sent.

The prediction replays the requests *as the server saw them*: their prompts cut into the server's blocks (not
the trace's), each full block named by its content as the engine names it, in the order they were sent, through
the same `KVCache` and policy that `agentkv cache sweep` runs, at the server's capacity in blocks. It follows
the engine's rules: only a prompt's full blocks are looked up; the last prompt token is always computed (a
fully cached prompt reports one token less); admission reserves the prompt's blocks, its partial last one
included, and decode reserves more as it reaches them; the blocks the reply fills are cached too, named by
their content: the prompt's tail and the reply's tokens. A later prompt rarely repeats a reply's tokens, but
when it does the server hits that block, so where the server lists the reply's token ids (vLLM's and agentkv's
`return_token_ids`, completions API) they are named in the prompt's words and can be hit here too; elsewhere
they get ids no prompt repeats. Exact when requests run one at a time (--max-inflight 1) and the reply's ids
came back; with overlap, requests in flight together see each other's blocks earlier or later than here.
Requests that failed are left out, though the server may have cached part of them.

`as_served` is also written as an agentkv trace, so `agentkv cache sweep as_served.npz --trace-clock` gives
the sweep's own figure for the same requests (it omits reply blocks and the last-token rule).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np

from agentkv.kvcache.block_hash import ROOT, block_hashes
from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.policies import make_policy
from agentkv.kvcache.policy import AccessContext
from agentkv.kvcache.tiers import TIER_NAMES, TierSpec
from agentkv.replay.results import measured
from agentkv.replay.runner import Record
from agentkv.replay.synth import Synth
from agentkv.sim.router import Router
from agentkv.workload.builder import TraceBuilder
from agentkv.workload.trace import Trace

SCOPE = ("agentkv-replay",)  # one id scope: equal content is equal KV whatever the session


@dataclass(slots=True, frozen=True)
class ServerModel:
    policy: str
    tiers: tuple[tuple[str, int], ...]  # (name, blocks) per replica, fastest first: the GPU, then host memory, ...
    block_size: int
    replicas: int = 1  # behind `router` (agentkv serve --replicas)
    router: str = "session"

    @property
    def capacity_blocks(self) -> int:
        return self.tiers[0][1]

    def describe(self) -> str:
        fleet = f" × {self.replicas} replicas, router {self.router}" if self.replicas > 1 else ""
        return f"{self.policy}, {' + '.join(f'{n} {b:,}' for n, b in self.tiers)} blocks of {self.block_size}{fleet}"


def fleet_from_metrics(text: str) -> tuple[int, str] | None:
    """(replicas, router) from `agentkv serve --replicas`'s /metrics (`agentkv_replicas{router=...} N`)."""
    m = re.search(r'^agentkv_replicas\{router="([\w-]+)"\}\s+(\S+)', text, re.M)
    return (int(float(m.group(2))), m.group(1)) if m else None


def kv_blocks_from_metrics(text: str) -> tuple[dict[str, int], int | None] | None:
    """({tier: KV blocks}, block size if stated) from a Prometheus page: agentkv's
    `agentkv_kv_blocks_total{tier=...}` or vLLM's `vllm:cache_config_info{num_gpu_blocks=..., block_size=...}`."""
    tiers: dict[str, int] = {}
    for line in text.splitlines():
        if m := re.match(r'agentkv_kv_blocks_total\{tier="(\w+)"\}\s+(\S+)', line):
            tiers[m.group(1)] = int(float(m.group(2)))
        elif line.startswith("vllm:cache_config_info{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if labels.get("num_gpu_blocks", "").isdigit():
                size = labels.get("block_size", "")
                return {"gpu": int(labels["num_gpu_blocks"])}, int(size) if size.isdigit() else None
    if "gpu" not in tiers:
        return None
    return dict(sorted(tiers.items(), key=lambda kv: TIER_NAMES.index(kv[0]) if kv[0] in TIER_NAMES else 99)), None


def as_served(records: list[Record], synth: Synth, overhead: int, block_size: int,
              token_words: dict[int, int] | None = None) -> tuple[Trace, list[Record], list[np.ndarray | None]]:
    """The measured requests as a trace at the server's block size, their records in the trace's order, and
    per request the ids (in the trace's id space) of the blocks its reply filled, None where the reply's
    tokens are unknown. `token_words` names a reply token by its word (Calibration.token_words)."""
    used = sorted((r for r in records if measured(r)), key=lambda r: r.sent)
    if not used:
        raise ValueError("no request came back with usage: nothing to predict")
    src = synth.trace
    b = TraceBuilder(block_size, source=f"replay of {src.source}")
    sessions: dict[str, int] = {}
    head = -np.arange(1, overhead + 1, dtype=np.int64)  # the server's own tokens: the same before every prompt
    prompts: dict[int, np.ndarray] = {}  # record's id -> its prompt's block hashes
    replies: dict[int, np.ndarray] = {}  # record's id -> the hashes of the blocks its reply filled
    for r in used:
        sid = sessions.get(r.session)
        if sid is None:
            sid = sessions[r.session] = b.add_session(r.session, start=0.0, scope=SCOPE)
        tokens = np.concatenate([head, synth.prompt_words(r.request)])
        prompts[id(r)] = block_hashes(tokens, block_size)
        if token_words and r.outcome.token_ids and len(r.outcome.token_ids) == r.outcome.completion_tokens:
            replies[id(r)] = _reply_hashes(tokens, prompts[id(r)], r.outcome.token_ids, token_words, -overhead - 1,
                                           block_size)
        b.add_request(sid, r.sent, len(tokens), max(r.outcome.completion_tokens, 0), prompts[id(r)],
                      api_time=r.outcome.e2e, finish=int(src.finish[r.request]))
    trace = b.build()
    trace.validate()
    by_session = sorted(used, key=lambda r: sessions[r.session])  # stable: each session's stay in sent order
    return trace, by_session, _in_trace_ids(trace, [prompts[id(r)] for r in by_session],
                                            [replies.get(id(r)) for r in by_session])


def _in_trace_ids(trace: Trace, prompts: list[np.ndarray], replies: list[np.ndarray | None],
                  ) -> list[np.ndarray | None]:
    """Reply blocks' hashes as the trace's ids: a prompt's block keeps the id the trace gave it, content no
    prompt holds gets an id past the trace's (equal content, equal id)."""
    if all(hashes is None for hashes in replies):  # no reply's tokens came back: nothing to name
        return list(replies)
    named: dict[int, int] = {}
    for i, hashes in enumerate(prompts):  # request i of the trace is prompt i
        named.update(zip(hashes.tolist(), trace.blocks(i).tolist(), strict=True))
    fresh = itertools.count(trace.n_block_ids)
    out: list[np.ndarray | None] = []
    for hashes in replies:
        if hashes is not None:
            for h in hashes.tolist():
                if h not in named:
                    named[h] = next(fresh)
            hashes = np.array([named[h] for h in hashes.tolist()], dtype=np.int64)
        out.append(hashes)
    return out


def _reply_hashes(tokens: np.ndarray, prompt: np.ndarray, reply: list[int], token_words: dict[int, int],
                  below: int, block_size: int) -> np.ndarray:
    """The hashes of the blocks a reply's written tokens fill (all but its last, which is sampled, never written),
    the prompt's partial last block first; a token that is no word is named `below - id`, which no prompt holds."""
    words = np.array([token_words.get(t, below - t) for t in reply[:-1]], dtype=np.int64)
    tail = np.concatenate([tokens[len(prompt) * block_size :], words])
    return block_hashes(tail, block_size, parent=int(prompt[-1]) if len(prompt) else ROOT)


def predict(served: Trace, model: ServerModel, replies: list[np.ndarray | None] | None = None) -> np.ndarray:
    """Predicted cached tokens of each request of `served` per tier [requests, tiers], replayed in its clock's
    order; `replies` as `as_served` gives them."""
    return predict_routed(served, model, replies)[0]


@dataclass(slots=True)
class _Replica:
    """A predicted replica as the router sees it (sim.router.ReplicaView): requests run one at a time, so
    nothing is outstanding when the next one is routed."""

    name: int
    cache: KVCache

    def outstanding_tokens(self) -> int:
        return 0

    def cached_prefix(self, ids: np.ndarray) -> int:
        return self.cache.lookup(ids)[0]


def predict_routed(served: Trace, model: ServerModel, replies: list[np.ndarray | None] | None = None,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """`predict`, and the replica each request goes to: the server's router (the simulator's) over one policy
    core per replica."""
    bs = served.block_size
    if model.block_size != bs:
        raise ValueError(f"trace at block size {bs}, server model at {model.block_size}")
    if model.capacity_blocks < 1:
        raise ValueError(f"a server KV capacity of {model.capacity_blocks} blocks predicts nothing")
    fleet = [_Replica(r, KVCache([TierSpec(name, blocks, 1) for name, blocks in model.tiers],
                                 make_policy(model.policy, block_size=bs))) for r in range(model.replicas)]
    router = Router(model.router)
    order = np.argsort(served.time, kind="stable")
    replies = replies or [None] * served.n_requests
    fresh = max([served.n_block_ids, *(int(r.max()) + 1 for r in replies if r is not None and len(r))])
    out = np.zeros((served.n_requests, len(model.tiers)), dtype=np.int64)
    routed = np.zeros(served.n_requests, dtype=np.int32)
    for rank, i in enumerate(order.tolist()):
        ids, n_in, n_out = served.blocks(i), int(served.input_tokens[i]), int(served.output_tokens[i])
        now = float(served.time[i])
        routed[i] = router.pick(fleet, ids, n_in, bs, int(served.session[i]))
        cache = fleet[routed[i]].cache
        ctx = AccessContext(now, session=int(served.session[i]), request=rank, finish=int(served.finish[i]),
                            output_tokens=n_out)
        grant = cache.acquire(rank, ids, -(-n_in // bs), ctx)  # the prompt's blocks, its partial last one too
        if grant is None:  # longer than the whole cache: the server refuses it too
            continue
        out[i] = grant.hits_per_tier * bs
        if grant.hit_blocks * bs >= n_in:  # all of it cached: the last token is computed again
            out[i, int(grant.hit_tiers[-1])] -= grant.hit_blocks * bs - (n_in - 1)
        cache.commit(rank, ids[grant.hit_blocks :], now)
        written = n_in + max(n_out, 1) - 1  # the last reply token is sampled, never written
        more = -(-written // bs) - -(-n_in // bs)  # decode's blocks, reserved as it reaches them
        if more <= 0 or cache.reserve(rank, more, now) is not None:
            n_reply = written // bs - len(ids)  # blocks the reply filled, the prompt's partial one included
            filled = replies[i]
            if filled is None or len(filled) != n_reply:  # its tokens unknown: content no prompt repeats
                filled, fresh = np.arange(fresh, fresh + n_reply), fresh + n_reply
            cache.commit(rank, filled, now)
        ctx.now = now + float(np.nan_to_num(served.api_time[i]))
        cache.release(rank, ctx)
    return out, routed
