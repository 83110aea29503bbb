"""A step's seconds and whom they are for: the step-cost model's price of a scheduled batch plus its tier
transfers, split into prefill / decode / cached-prefix / transfer time for the cost model."""

from __future__ import annotations

from agentkv.scheduler import PrefillChunk, Sequence, StepPlan
from agentkv.sim.stepcost import Deployment, StepCost, StepShape, step_cost, transfer_seconds

PRICES_KEPT = 1 << 14  # prefill-only step costs remembered per simulation (~7 MB): a 432k-request trace's
# cached-prefix lengths make most chunk shapes distinct, and those need not all be held


def price_step(batch: StepPlan, d: Deployment, links: list[str], block_bytes: int, totals: dict,
               prefill_only: dict[tuple, StepCost], landed: bool = False) -> float:
    """Seconds the batch takes, split into prefill / decode / cached-prefix / transfer time for the cost model.
    `prefill_only` remembers the cost of steps with no decodes by their chunks: a long prompt's chunks repeat
    from request to request (8192 tokens after 0, 8192, ...); it starts over at PRICES_KEPT entries.
    `landed`: prompt chunks hold KV computed elsewhere (a disaggregated decode pool), so they cost nothing here."""
    chunks = [] if landed else batch.prefills
    prefills = tuple((c.n, c.start) for c in chunks)
    decodes = tuple(q.computed + 1 for q in batch.decodes)
    cost = step_cost(StepShape(prefills, decodes), d) if decodes else prefill_cost(prefills, d, prefill_only)
    total = cost.total
    moved: dict[str, float] = {}
    for mv in batch.moves:  # every copy at its link's bandwidth: promotions, demotions, write-through copies
        if mv.kind != "drop":
            link = links[max(mv.src, mv.dst)]  # the slower end's link
            moved[link] = moved.get(link, 0.0) + len(mv.blocks) * block_bytes
    transfer = transfer_seconds(moved, d) if moved else 0.0
    secs = max(total, transfer) if d.overlap_transfers else total + transfer
    _account(cost, chunks, batch.decodes, totals, secs - total)
    return secs


def price_chunk(chunk: PrefillChunk, cost: StepCost, totals: dict, landed: bool = False) -> float:
    """`price_step` of a step that is `chunk` alone and moves nothing between tiers (`cost`: its `prefill_cost`),
    without building the step: a prompt's full chunks run as one event (`sim/prefill_leap.py`)."""
    _account(cost, [] if landed else [chunk], [], totals, 0.0)
    return cost.total


def _account(cost: StepCost, chunks: list[PrefillChunk], decodes: list[Sequence], totals: dict,
             transfer_s: float) -> None:
    """A priced step in the totals: its time by whom it is for (`attribute`), what its transfers add, its tokens."""
    attribute(cost, chunks, decodes, totals)
    totals["transfer"] += transfer_s
    totals["steps"] += 1
    totals["prefill_tokens"] += sum(c.n for c in chunks)
    totals["decode_tokens"] += len(decodes)


def prefill_cost(prefills: tuple[tuple[int, int], ...], d: Deployment, memo: dict[tuple, StepCost]) -> StepCost:
    """A step of prompt chunks ((tokens, start) each) and no decodes, remembered in `memo` (see `price_step`)."""
    if prefills not in memo:
        if len(memo) >= PRICES_KEPT:
            memo.clear()
        memo[prefills] = step_cost(StepShape(prefills), d)
    return memo[prefills]


def attribute(cost: StepCost, prefills: list[PrefillChunk], decodes: list[Sequence], totals: dict,
               steps: int = 1, ahead: int = 0) -> None:
    """Who a step's time is for. Token-proportional work (weights, KV writes, all-reduce, overhead) goes to the
    step's new tokens: prefill chunks to uncached input, decodes to output. Attention goes to the keys it reads:
    a (query, key) pair over a cached prompt token is the cost of serving that token from the cache, over an
    output token the output's, else the uncached input's. `ahead`: decodes `steps` long, at mid-leap context.
    A decode's keys (computed + 1 + ahead) exceed its prompt and so its cached prefix: its sums need no min/max,
    and being integers (as the chunks' half-integers are) they add up exactly in any order."""
    tokens = sum(c.n for c in prefills) + len(decodes)
    per_token = (cost.total - cost.attention) * steps
    prefill_part = sum(c.n for c in prefills) / tokens if tokens else 0.0
    cached = out = pairs = 0.0
    for c in prefills:  # causal pairs inside the chunk; keys before it: the cached prefix, then earlier chunks
        pairs += c.n * (c.start + (c.n + 1) / 2)
        cached += c.n * min(c.seq.cached, c.start)
    if decodes:
        keys = sum(q.computed for q in decodes) + (1 + ahead) * len(decodes)
        pairs += keys
        cached += sum(q.cached for q in decodes)
        out += keys - sum(q.prompt_len for q in decodes)
    attn = cost.attention * steps
    share = (lambda x: attn * x / pairs) if pairs else (lambda x: 0.0)
    totals["cached"] += share(cached)
    totals["decode"] += per_token * (1.0 - prefill_part) + share(out)
    totals["prefill"] += per_token * prefill_part + attn - share(cached) - share(out)
