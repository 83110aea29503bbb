"""Speculative decoding (MTP, EAGLE): a small draft proposes tokens, the target verifies them all in one pass.

Per verification step every sequence runs `draft_tokens` + 1 query tokens through the target (priced as a prefill
chunk of that many tokens after its context) and the draft runs `draft_tokens` one-token steps of its own
`draft_layers`; the step emits `acceptance_length` tokens per sequence on average. The acceptance length depends on
the model, the draft and the text, so it is a stated parameter, never derived here (DeepSeek-V3's report gives
85-90% acceptance of its one MTP token, arXiv 2412.19437 §5.4.3, 2024-12-27: an acceptance length of ~1.85-1.9).
"""

from __future__ import annotations

from dataclasses import dataclass

from agentkv.sim.stepcost import Deployment, StepShape, step_cost


@dataclass(slots=True, frozen=True)
class Speculation:
    draft_tokens: int  # proposed per step
    acceptance_length: float  # tokens emitted per sequence per step, the bonus token included (1 .. draft_tokens+1)
    draft_layers: int = 1  # MTP: one module per draft token (DeepSeek-V3); EAGLE: one decoder layer

    def __post_init__(self) -> None:
        if self.draft_tokens < 1 or self.draft_layers < 1:
            raise ValueError("draft_tokens and draft_layers must be >= 1")
        if not 1.0 <= self.acceptance_length <= self.draft_tokens + 1:
            raise ValueError(f"acceptance_length={self.acceptance_length:g} must be in 1..{self.draft_tokens + 1}")


def draft_seconds(batch: int, context: int, d: Deployment, spec: Speculation) -> float:
    """The draft's steps: each a one-token decode through `draft_layers` layers' share of the target's weights,
    attention and collectives, at the per-layer floor, its step overhead riding on the verification step's."""
    one = step_cost(StepShape(decodes=(context,) * batch), d)
    share = spec.draft_layers / d.model.layers
    work = (one.weights + one.attention + one.kv_write + one.communication) * share
    return spec.draft_tokens * (work + spec.draft_layers * d.coefficients.layer_floor_s)


def seconds_per_token(batch: int, context: int, d: Deployment, spec: Speculation) -> float:
    """Time per output token of each of `batch` sequences at `context`: verification plus drafting, over the
    tokens a step emits."""
    verify = step_cost(StepShape(prefills=((spec.draft_tokens + 1, context),) * batch), d).total
    return (verify + draft_seconds(batch, context, d, spec)) / spec.acceptance_length
