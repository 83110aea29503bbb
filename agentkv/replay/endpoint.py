"""Check the endpoint before replaying: is it there, does it take the key, which model, how long a context.

A replay that finds out per request (every one a connect error, a 401 or a 400 for a prompt over the window)
costs the whole run to say what one probe of `/v1/models` says at once, so everything it can tell is asked
there first and answered in one line. vLLM, SGLang and agentkv list `max_model_len` beside each model.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from agentkv.cli_errors import UsageError
from agentkv.replay.client import Api


@dataclass(slots=True, frozen=True)
class Endpoint:
    model: str
    max_model_len: int | None  # None: the server does not say
    keyed: bool  # a key was sent and accepted

    def describe(self, base: str) -> str:
        window = f"max_model_len {self.max_model_len:,}" if self.max_model_len else "max_model_len not listed"
        key = "key accepted" if self.keyed else "no key needed"
        return f"{base} reachable, {key}, model {self.model}, {window}"


async def probe(client: httpx.AsyncClient, api: Api, model: str | None) -> Endpoint:
    """The served model (`model`, checked against the list, else the first listed) and its window."""
    base = str(client.base_url).rstrip("/")
    try:
        r = await client.get("/v1/models", headers=api.headers())
    except httpx.HTTPError as e:
        raise UsageError(f"--endpoint {base}: cannot connect ({type(e).__name__}: {e or 'no answer'}); "
                         "is the server running there?") from None
    if r.status_code in (401, 403):
        raise UsageError(f"--api-key: {base} refused " + ("the key" if api.api_key else "a request without a key")
                         + f" (HTTP {r.status_code}); pass the server's key with --api-key or $AGENTKV_API_KEY")
    listed = _models(r)
    if listed is None:
        if model is None:
            raise UsageError(f"--endpoint {base}: /v1/models answered HTTP {r.status_code} without a model list; "
                             "pass --model")
        return Endpoint(model, None, bool(api.api_key))
    if model is not None and model not in listed:
        raise UsageError(f"--model {model}: {base} serves {', '.join(listed) or 'no model'}")
    name = model or next(iter(listed), None)
    if name is None:
        raise UsageError(f"--endpoint {base}: /v1/models lists no model")
    return Endpoint(name, listed[name], bool(api.api_key))


def _models(r: httpx.Response) -> dict[str, int | None] | None:
    """{model id: max_model_len or None} from an OpenAI-style model list; None when it is not one."""
    try:
        data = r.json()["data"] if r.status_code == 200 else None
        if not isinstance(data, list):
            return None
        return {str(m["id"]): m.get("max_model_len") if isinstance(m.get("max_model_len"), int) else None
                for m in data}
    except (ValueError, KeyError, TypeError):
        return None
