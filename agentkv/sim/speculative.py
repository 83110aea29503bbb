"""Speculative decoding (MTP, EAGLE): a small draft proposes tokens, the target verifies them all in one pass.

Per verification step every decoding sequence runs `draft_tokens` + 1 query tokens through the target (one
pass over its weights and its KV, `StepShape.decode_queries`), and the draft runs `draft_tokens` one-token steps
through `draft_layers` layers of the target's shape; the step emits `acceptance_length` tokens per sequence on
average. The acceptance length depends on the model, the draft and the text, so it is a stated parameter, never
derived here. Published figures to state it from: DeepSeek-V3's one MTP token is accepted 85-90% of the time
(arXiv 2412.19437 §5.4.3, 2024-12-27), an acceptance length of ~1.85-1.9 at `draft_tokens=1`.

The draft's layers are stored beside the target's weights (`Deployment.weight_bytes`: one layer's share each;
DeepSeek-V3's MTP module is 11.5B unique parameters beside 671B, README_WEIGHTS.md of its checkpoint, read
2026-12-05). `stepcost.step_cost` prices a step of a deployment that speculates per token emitted (the simulator advances a
decode by one token a step), so every reader of the step cost (simulator, report, calibration) sees it.
"""

from __future__ import annotations

from dataclasses import dataclass


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

    @property
    def verify_queries(self) -> int:
        """Query tokens each sequence runs through the target per step: the drafted ones and the bonus token."""
        return self.draft_tokens + 1

    def draft_share(self, layers: int) -> float:
        """The draft's forward passes as a share of one target decode step's layer work."""
        return self.draft_tokens * self.draft_layers / layers
