"""What `LLM.generate` returns, shaped as vLLM's (`outputs[0].text`), plus the cache's view of the request."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop", "length" or "abort"; None while running
    stop_reason: str | int | None = None  # the stop string or token that ended it
    delta: str = ""  # the text new this step, for streams (`text` is filled in once finished)


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache (at its first admission)
    cached_tokens_per_tier: dict[str, int] = field(default_factory=dict)  # {"gpu": 48, "dram": 16}
    preemptions: int = 0
