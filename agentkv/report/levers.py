"""Levers at a glance, for one context size on one deployment: how many contexts the KV codecs fit, what
bringing a cached context back from each tier costs next to recomputing it, and what speculative decoding buys
in output speed and decode GPU-seconds per token by batch."""

from __future__ import annotations

from dataclasses import dataclass, replace

from agentkv.kvcache.sizing import CODECS
from agentkv.sim.stepcost import Deployment, decode_seconds, prefill_seconds, transfer_seconds


@dataclass(slots=True, frozen=True)
class CodecFit:
    codec: str
    gib_per_context: float
    contexts_per_gpu: float


@dataclass(slots=True, frozen=True)
class TierLoad:
    source: str  # "recompute", "dram", "disk", "remote"
    seconds: float


def contexts_per_gpu(d: Deployment, context: int) -> float:
    """`context`-token sequences the replica's KV room holds, per GPU (every layer by its kind, TP replicas
    counted)."""
    return max(d.kv_capacity_bytes, 0.0) / d.kv_bytes(context) / d.tp


def codec_fits(d: Deployment, context: int, codecs: tuple[str, ...] = ("bf16", "fp8", "int8", "int4")) -> list[CodecFit]:
    out = []
    for name in codecs:
        dc = replace(d, kv_codec=CODECS[name])
        out.append(CodecFit(name, dc.kv_bytes(context) / 2**30, contexts_per_gpu(dc, context)))
    return out


def tier_loads(d: Deployment, context: int, chunk: int = 8192) -> list[TierLoad]:
    """Seconds to have a `context`-token prefix's KV on the GPU: recomputed, or copied from each tier."""
    size = d.kv_bytes(context)
    return [
        TierLoad("recompute", prefill_seconds(context, d, chunk)),
        TierLoad("dram", transfer_seconds({"host": size}, d)),
        TierLoad("disk", transfer_seconds({"nvme": size}, d)),
        TierLoad("remote", transfer_seconds({"network": size}, d)),
    ]


@dataclass(slots=True, frozen=True)
class SpeculationGain:
    batch: int
    plain_tps: float  # output tokens/s of each sequence, decoding one token a step
    speculative_tps: float  # the same with the deployment's speculation

    @property
    def cost_ratio(self) -> float:
        """Decode GPU-seconds per output token (so decode's share of $/Mtok), speculative over plain."""
        return self.plain_tps / self.speculative_tps


def speculation_gains(d: Deployment, context: int, batches: tuple[int, ...] = (1, 8, 64, 256)) -> list[SpeculationGain]:
    """Per-sequence output speed with and without `d`'s speculation, `batch` sequences decoding at `context`:
    large at small batches (a verification reads the weights once for k+1 tokens), shrinking as the step turns
    compute-bound."""
    if d.speculation is None:
        raise ValueError("speculation_gains needs a deployment that speculates")
    plain = replace(d, speculation=None)
    return [SpeculationGain(b, 1 / decode_seconds(b, context, plain), 1 / decode_seconds(b, context, d))
            for b in batches]
