"""One streamed request to an OpenAI- or Anthropic-compatible server, timed, with every failure named by kind.

A load tool that crashes on the first odd reply measures nothing, so nothing a server sends raises out of
`send`: HTTP errors become `http_<status>`, and the rest `connect`, `timeout`, `disconnected` (the connection
dropped mid-reply), `bad_json` (a body or event that is not JSON, or not the API's shape), `stream_error` (an
error event inside the stream) or `truncated` (the stream ended without its end marker).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

APIS = {"openai": "/v1/completions", "openai-chat": "/v1/chat/completions", "anthropic": "/v1/messages"}
ANTHROPIC_VERSION = "2023-06-01"


class BadReply(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass(slots=True)
class Outcome:
    error: str = ""  # "" when the reply was whole, else its kind
    detail: str = ""
    status: int = 0
    ttft: float = float("nan")  # seconds to the first text
    e2e: float = float("nan")
    prompt_tokens: int = -1  # as the server counted them (-1: not reported)
    completion_tokens: int = -1
    cached_tokens: int = -1
    cached_per_tier: dict[str, int] = field(default_factory=dict)
    replica: str = ""  # which replica answered, where the server says (agentkv serve --replicas)
    token_ids: list[int] | None = None  # the reply's, where the server lists them (Api.token_ids)


@dataclass(slots=True)
class Api:
    kind: str  # a key of APIS
    model: str
    api_key: str = ""
    ignore_eos: bool = True  # vLLM/SGLang/agentkv extension: the reply runs to the trace's length
    extra: dict[str, Any] = field(default_factory=dict)  # merged into every body (e.g. cache_salt)
    token_ids: bool = False  # ask for the reply's token ids (vLLM/agentkv `return_token_ids`)

    @property
    def path(self) -> str:
        return APIS[self.kind]

    def headers(self) -> dict[str, str]:
        if self.kind == "anthropic":
            return {"anthropic-version": ANTHROPIC_VERSION, **({"x-api-key": self.api_key} if self.api_key else {})}
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def body(self, text: str, max_tokens: int, stream: bool = True) -> dict[str, Any]:
        b: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "temperature": 0.0, "stream": stream}
        if self.kind == "openai":
            b["prompt"] = text
        else:
            b["messages"] = [{"role": "user", "content": text}]
        if self.kind != "anthropic":
            if stream:
                b["stream_options"] = {"include_usage": True}
            if self.ignore_eos:
                b["ignore_eos"] = True
            if self.token_ids:
                b["return_token_ids"] = True
        return {**b, **self.extra}

    def event(self, obj: dict[str, Any], out: Outcome) -> tuple[bool, bool]:
        """One streamed event: (whether it carries output, whether it ends the stream). Output counts even when
        its text is empty (a token that decodes to nothing is still the first token)."""
        if self.kind == "anthropic":
            kind = obj.get("type")
            if kind == "error":
                raise BadReply("stream_error", json.dumps(obj.get("error"))[:300])
            if kind == "message_start":
                self._usage(obj["message"].get("usage") or {}, out)
            elif kind == "message_delta":
                self._usage(obj.get("usage") or {}, out)
            return kind == "content_block_delta", kind == "message_stop"
        if "error" in obj:
            raise BadReply("stream_error", json.dumps(obj["error"])[:300])
        if isinstance(obj.get("usage"), dict):
            self._usage(obj["usage"], out)
        choices = obj.get("choices") or []
        if choices:
            self._token_ids(choices[0], out)
        return bool(choices) and (self.kind == "openai" or "content" in choices[0]["delta"]), False

    def whole(self, obj: dict[str, Any], out: Outcome) -> None:
        """A reply that came back in one piece (the server ignored `stream`)."""
        self._usage(obj.get("usage") or {}, out)
        if self.kind != "anthropic" and obj.get("choices"):
            self._token_ids(obj["choices"][0], out)

    def _token_ids(self, choice: dict[str, Any], out: Outcome) -> None:
        ids = choice.get("token_ids") if self.token_ids else None
        if isinstance(ids, list):
            out.token_ids = (out.token_ids or []) + [int(t) for t in ids]

    def _usage(self, u: dict[str, Any], out: Outcome) -> None:
        if self.kind == "anthropic":
            if "input_tokens" in u:
                read, made = int(u.get("cache_read_input_tokens") or 0), int(u.get("cache_creation_input_tokens") or 0)
                out.prompt_tokens, out.cached_tokens = int(u["input_tokens"]) + read + made, read
            if "output_tokens" in u:
                out.completion_tokens = int(u["output_tokens"])
            tiers = u.get("cached_tokens_per_tier")
        else:
            out.prompt_tokens = int(u.get("prompt_tokens", out.prompt_tokens))
            out.completion_tokens = int(u.get("completion_tokens", out.completion_tokens))
            details = u.get("prompt_tokens_details") or {}
            if details.get("cached_tokens") is not None:
                out.cached_tokens = int(details["cached_tokens"])
            tiers = details.get("cached_tokens_per_tier") or u.get("cached_tokens_per_tier")
        if isinstance(tiers, dict):
            out.cached_per_tier = {str(k): int(v) for k, v in tiers.items()}


async def send(client: httpx.AsyncClient, api: Api, text: str, max_tokens: int, session: str = "") -> Outcome:
    """`session` goes out as `x-session-id`, so a server's cache policy can follow the conversation."""
    out = Outcome()
    t0 = time.perf_counter()
    headers = api.headers() | ({"x-session-id": session} if session else {})
    try:
        async with client.stream("POST", api.path, json=api.body(text, max_tokens), headers=headers) as r:
            out.status = r.status_code
            out.replica = r.headers.get("x-agentkv-replica", "")
            if not 200 <= r.status_code < 300:
                body = (await r.aread())[:300].decode("utf-8", "replace")
                out.error, out.detail = f"http_{r.status_code}", body
            elif "text/event-stream" not in r.headers.get("content-type", ""):
                api.whole(_json((await r.aread()).decode("utf-8", "replace")), out)  # no TTFT to measure
            elif not await _read_stream(r, api, out, t0):
                out.error, out.detail = "truncated", "the stream ended without its end marker"
    except BadReply as e:
        out.error, out.detail = e.kind, str(e)
    except (KeyError, TypeError, IndexError, AttributeError, ValueError) as e:
        out.error, out.detail = "bad_json", f"unexpected reply shape: {type(e).__name__}: {e}"[:300]
    except httpx.TimeoutException as e:
        out.error, out.detail = "timeout", type(e).__name__
    except httpx.ConnectError as e:
        out.error, out.detail = "connect", str(e)[:300]
    except (httpx.RemoteProtocolError, httpx.ReadError) as e:
        out.error, out.detail = "disconnected", str(e)[:300]
    except httpx.HTTPError as e:
        out.error, out.detail = "http_error", f"{type(e).__name__}: {e}"[:300]
    out.e2e = time.perf_counter() - t0
    return out


async def _read_stream(r: httpx.Response, api: Api, out: Outcome, t0: float) -> bool:
    """Server-sent events until the end marker (True) or the end of the body (False: truncated)."""
    async for line in r.aiter_lines():
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return True
        token, done = api.event(_json(payload), out)
        if token and out.ttft != out.ttft:
            out.ttft = time.perf_counter() - t0
        if done:
            return True
    return False


def _json(text: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        raise BadReply("bad_json", f"not JSON: {text[:120]!r}") from None
    if not isinstance(obj, dict):
        raise BadReply("bad_json", f"expected a JSON object: {text[:120]!r}")
    return obj
