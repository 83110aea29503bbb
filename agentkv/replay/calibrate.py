"""Ask the server how it counts the replay's words, before replaying: block boundaries hold only if it agrees.

Three texts are counted: words A, words B, and A followed by B. The server's own additions (BOS, a chat
template's header and footer) are the same in all three, so `overhead = c(A) + c(B) − c(A+B)`, and each part
must then count exactly its words. Counts come from the server's tokenizer endpoint where it has one (vLLM's
`/tokenize`, Anthropic's `/v1/messages/count_tokens`), else from the usage of a one-token request.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from agentkv.replay.client import Api, Outcome, send

PROBE_WORDS = 128  # per part: 256 distinct words checked


@dataclass(slots=True, frozen=True)
class Calibration:
    overhead: int  # tokens the server adds to every prompt
    checked_words: int
    method: str


async def calibrate(client: httpx.AsyncClient, api: Api, words: tuple[str, ...],
                    max_model_len: int | None = None) -> Calibration:
    """Probe texts fit a small window too: half of it for the two runs together, the rest for the server's own."""
    n = min(PROBE_WORDS, len(words) // 2, (max_model_len or 4 * PROBE_WORDS) // 4)
    a, b = " ".join(words[:n]), " ".join(words[n : 2 * n])
    method = await _tokenizer_endpoint(client, api, a)
    got = [await _count(client, api, text, method) for text in (a, b, f"{a} {b}")]
    counts = [c for c, _ in got]
    overhead = counts[0] + counts[1] - counts[2]
    if counts[0] - overhead != n or counts[1] - overhead != n:
        raise ValueError(f"the server counts {counts[0] - overhead} and {counts[1] - overhead} tokens for two runs "
                         f"of {n} replay words (via {method}): its tokenizer splits them, so block boundaries would "
                         "not hold; pass --tokenizer with the served model's tokenizer.json")
    tokens = got[2][1]
    if tokens is not None and len(set(tokens)) < 2 * n:  # a tokenizer that names its ids shows words merging
        raise ValueError(f"the server's tokenizer gives {2 * n} replay words only {len(set(tokens))} distinct tokens "
                         "(an unknown-word token?): different blocks would look alike; pass --tokenizer with the "
                         "served model's tokenizer.json")
    return Calibration(overhead, 2 * n, method)


async def _tokenizer_endpoint(client: httpx.AsyncClient, api: Api, text: str) -> str:
    """The cheapest way this server offers to count a prompt's tokens."""
    path = "/v1/messages/count_tokens" if api.kind == "anthropic" else "/tokenize"
    try:
        r = await client.post(path, json=_tokenize_body(api, text), headers=api.headers())
        if r.status_code == 200 and _tokenized(r.json()) is not None:
            return path
    except (httpx.HTTPError, ValueError):
        pass
    return "usage"


async def _count(client: httpx.AsyncClient, api: Api, text: str, method: str) -> tuple[int, list | None]:
    """The server's token count for `text`, and its token ids where the endpoint lists them."""
    if method != "usage":
        r = await client.post(method, json=_tokenize_body(api, text), headers=api.headers())
        obj = r.json() if r.status_code == 200 else None
        n = _tokenized(obj)
        if n is None:
            raise ValueError(f"{method} answered {r.status_code}: {r.text[:200]}")
        tokens = obj.get("tokens")  # obj is the dict `_tokenized` read a count from
        return n, tokens if isinstance(tokens, list) else None
    out: Outcome = await send(client, api, text, 1)
    if out.error or out.prompt_tokens < 0:
        raise ValueError(f"calibration request to {api.path} failed: "
                         f"{out.error or 'no usage.prompt_tokens in the reply'} {out.detail}".strip())
    return out.prompt_tokens, None


def _tokenize_body(api: Api, text: str) -> dict:
    if api.kind == "openai":
        return {"model": api.model, "prompt": text}
    body = {"model": api.model, "messages": [{"role": "user", "content": text}]}
    return body | {"max_tokens": 1} if api.kind == "anthropic" else body  # some servers validate it as a message


def _tokenized(obj: object) -> int | None:
    if not isinstance(obj, dict):
        return None
    for key in ("count", "input_tokens"):
        if isinstance(obj.get(key), int):
            return obj[key]
    return len(obj["tokens"]) if isinstance(obj.get("tokens"), list) else None
