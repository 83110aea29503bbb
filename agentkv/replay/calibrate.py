"""Ask the server how it counts the replay's words, before replaying: block boundaries hold only if it agrees.

Three texts are counted: words A, words B, and A followed by B. The server's own additions (BOS, a chat
template's header and footer) are the same in all three, so `overhead = c(A) + c(B) − c(A+B)`, and each part
must then count exactly its words. Counts come from the server's tokenizer endpoint where it has one (vLLM's
`/tokenize`, Anthropic's `/v1/messages/count_tokens`), else from the usage of a one-token request.

Where the endpoint lists ids (vLLM's and agentkv's `/tokenize`, completions API), every word's id is learnt as it
reads after a space: a reply's tokens that fill a block are then named in the prompt's terms, and a later prompt
that happens to repeat them hits that block on the server, as the prediction must say (see `predict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from agentkv.replay.client import Api, Outcome, send

PROBE_WORDS = 128  # per part: 256 distinct words checked


@dataclass(slots=True, frozen=True)
class Calibration:
    overhead: int  # tokens the server adds to every prompt
    checked_words: int
    method: str
    token_words: dict[int, int] = field(default_factory=dict)  # token id -> word index; {} where not listed


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
    ids = await _word_ids(client, api, words, method, overhead, n) if tokens is not None and api.kind == "openai" else {}
    return Calibration(overhead, 2 * n, method, ids)


async def _word_ids(client: httpx.AsyncClient, api: Api, words: tuple[str, ...], method: str, overhead: int,
                    per_call: int) -> dict[int, int]:
    """{token id: word index} for every word after a space (each run starts with words[0], so every word of
    the run has one before it); {} if any run does not come back one id per word."""
    out: dict[int, int] = {}
    try:
        for k in range(0, len(words), per_call):
            run = words[k : k + per_call]
            n, tokens = await _count(client, api, " ".join((words[0], *run)), method)
            if tokens is None or n != overhead + 1 + len(run) or len(tokens) != n:
                return {}
            out.update(zip((int(t) for t in tokens[-len(run):]), range(k, k + len(run)), strict=True))
    except ValueError:
        return {}
    return out if len(out) == len(words) else {}


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
