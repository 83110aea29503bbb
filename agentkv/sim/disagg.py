"""Prefill/decode disaggregation: prompts prefilled on one pool of replicas, their KV sent to a decode pool
(NVIDIA Dynamo, SGLang PD, vLLM's disaggregated prefill), each pool in its own deployment mode.

What the split costs is the KV transfer per request, over NVLink when both replicas sit in one scale-up domain
(an NVL72 rack), else over the NICs (RDMA); what it buys is decode steps no prefill interrupts. The P:D ratio is
sized so both pools are busy alike: prefill GPU-seconds per request over decode GPU-seconds per request.
"""

from __future__ import annotations

from dataclasses import dataclass

from agentkv.kvcache.sizing import kv_bytes
from agentkv.sim.stepcost import Deployment, decode_seconds, prefill_seconds

PREFILL_CHUNK = 8192  # tokens per prefill step on a prefill-only replica (SGLang's default chunked_prefill_size)


@dataclass(slots=True, frozen=True)
class Disaggregated:
    prefill: Deployment
    decode: Deployment
    fleet_gpus: int = 0  # both pools' GPUs (0: the one pair): the KV crosses NICs unless all of them share a domain

    def __post_init__(self) -> None:
        p, d = self.prefill, self.decode
        if (p.model, p.kv_codec) != (d.model, d.kv_codec):
            raise ValueError("prefill and decode pools must serve one model with one KV codec")

    @property
    def same_domain(self) -> bool:
        """The fleet fits one NVLink domain (one rack of an NVL72), so KV moves over NVLink: a prefill replica
        sends to any decode replica, so one pair sharing a node is not enough."""
        gpus = max(self.fleet_gpus, self.prefill.tp + self.decode.tp)
        return gpus <= self.prefill.hardware.scale_up_gpus

    def transfer_seconds(self, prompt: int) -> float:
        """One request's KV, one copy of it (each rank sends its shard; replicated MLA latents go once), over
        NVLink or the prefill replica's NICs in parallel, at the link efficiency, plus the network's latency."""
        p, c = self.prefill, self.prefill.coefficients
        link = p.hardware.interconnect_bw if self.same_domain else p.hardware.network_bw
        latency = 0.0 if self.same_domain else c.network_load_latency_s
        return latency + kv_bytes(p.model, p.kv_codec, prompt) / (p.tp * link * c.link_efficiency)

    def ttft_seconds(self, prompt: int) -> float:
        """An idle prefill replica's prefill, the transfer, and the decode pool's first step for it."""
        return (prefill_seconds(prompt, self.prefill, PREFILL_CHUNK) + self.transfer_seconds(prompt)
                + decode_seconds(1, prompt + 1, self.decode))

    def gpus_per_request(self, prompt: int, output: int, decode_batch: int) -> tuple[float, float]:
        """(prefill, decode) GPU-seconds one request takes: its prefill (and sending its KV) on a prefill replica;
        its `output` decode steps, shared with decode_batch - 1 others, on a decode replica."""
        p, d = self.prefill, self.decode
        pre = (prefill_seconds(prompt, p, PREFILL_CHUNK) + self.transfer_seconds(prompt)) * p.tp
        dec = output * decode_seconds(decode_batch, prompt + output // 2, d) * d.tp / decode_batch
        return pre, dec

    def prefill_share(self, prompt: int, output: int, decode_batch: int) -> float:
        """Fraction of the fleet's GPUs the prefill pool needs so neither pool waits on the other."""
        pre, dec = self.gpus_per_request(prompt, output, decode_batch)
        return pre / (pre + dec)

    def pools(self, gpus: int, prompt: int, output: int, decode_batch: int) -> tuple[int, int]:
        """Whole prefill and decode replicas for a fleet of about `gpus` GPUs, at least one of each."""
        share = self.prefill_share(prompt, output, decode_batch)
        n_pre = max(1, round(gpus * share / self.prefill.tp))
        n_dec = max(1, round(gpus * (1 - share) / self.decode.tp))
        return n_pre, n_dec
