"""What OpenAI's chat and completions replies share: usage, and vLLM's `return_token_ids`."""

from __future__ import annotations

from typing import Any

from agentkv.server import openai_protocol as oai
from agentkv.server.jobs import Result


def usage(r: Result) -> oai.Usage:
    return oai.Usage(prompt_tokens=r.prompt_tokens, completion_tokens=r.output_tokens,
                     total_tokens=r.prompt_tokens + r.output_tokens,
                     prompt_tokens_details=oai.PromptTokensDetails(cached_tokens=r.cached_tokens,
                                                                   cached_tokens_per_tier=r.cached_tokens_per_tier))


def with_ids(obj: dict[str, Any], body: oai.Sampling, prompt: list[int] | None, reply: list[int], *,
             prompt_on_choice: bool) -> dict[str, Any]:
    """vLLM's `return_token_ids`, where asked: the reply's ids on the choice, the prompt's on the choice
    (completions) or the response (chat); a stream sends the prompt's with its first chunk only."""
    if body.return_token_ids:
        choice = obj["choices"][0]
        if prompt is not None:
            (choice if prompt_on_choice else obj)["prompt_token_ids"] = list(prompt)
        choice["token_ids"] = list(reply)
    return obj


def sampling(body: oai.Sampling) -> dict[str, Any]:
    """The `Ask` fields both endpoints fill alike."""
    return dict(model=body.model, stop=body.stop_list, salt=body.cache_salt or "", temperature=body.temperature,
                top_p=body.top_p, top_k=body.top_k, seed=body.seed, ignore_eos=body.ignore_eos)
