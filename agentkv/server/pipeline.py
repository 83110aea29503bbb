"""One request pipeline under every API: an adapter's `to_request` turns its API's body into an `Ask` (the
request in the engine's terms), then `Pipeline.start` renders its prompt, compiles its grammar, checks it
against the context window and admits it, and hands back a `Job` whose deltas the adapter's renderer
shapes (through the one reply state machine, `server/reply.py`).

The Ray gateway (`cluster/serve.py`) calls the same `to_request` and `encode`, so it routes on exactly the
prompt a replica will run.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from agentkv.engine.grammar import StructuredOutputsParams
from agentkv.engine.sequence import SamplingParams
from agentkv.server.chat import Messages, Tools
from agentkv.server.errors import APIError
from agentkv.server.jobs import Jobs
from agentkv.server.limits import text_chars
from agentkv.server.reply import Reply
from agentkv.server.structured import forced_call, json_reply

# llguidance compiles with the GIL released, so concurrent compiles take whole cores: at most half of them
# (vLLM's rule for its grammar workers), the rest stay the engine thread's and the event loop's
COMPILE_WORKERS = max(1, (os.cpu_count() or 2) // 2)
GREEDY_BELOW = 1e-5  # temperatures this small are greedy (dividing logits by them overflows)
PROMPT_CHARS_PER_TOKEN = 16  # default prompt limit in characters per token of context (text averages ~4)


@dataclass(slots=True)
class Context:
    """What translating a request needs of the server (the gateway builds one from the same flags)."""

    tokenizer: Any
    reasoning_parser: str | None = None


@dataclass(slots=True)
class Ask:
    """A request of any API in the engine's terms, its prompt not yet tokenized: what `to_request` returns."""

    endpoint: str  # "chat" | "completions" | "messages" | "responses": the metrics label and the id's prefix
    model: str
    messages: Messages | None = None  # a chat (through the template), else `prompt`
    tools: Tools = None
    prompt: str | list[int] | None = None  # text or token ids, as given
    template: dict[str, Any] = field(default_factory=dict)  # more chat template variables (enable_thinking, ...)
    max_tokens: int | None = None  # None: the rest of the context window
    stop: tuple[str, ...] = ()
    session: str | None = None  # x-session-id, else the API's own field
    salt: str = ""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    ignore_eos: bool = False
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias)
    forced_tool: str | None = None  # None (the model decides), "*" (any tool) or a tool's name
    parallel_tool_calls: bool = True
    json_format: tuple[str, dict[str, Any] | None] | None = None  # (kind, schema) of a JSON reply
    format_param: str = "response_format"  # the field a refused JSON format came in
    think: bool = False  # the reply opens with <think>...</think> to split off
    param: str = "messages"  # the field the prompt came in (errors name it)
    add_special_tokens: bool = True  # a text prompt's BOS (vLLM's /tokenize may leave it out)


@dataclass(slots=True)
class Job:
    """An admitted request: its deltas, and what the renderer echoes."""

    ask: Ask
    rid: str
    prompt: list[int]
    deltas: AsyncIterator[Any]
    session: str | None  # the engine's name for its session (the tenant's, then the client's)


def session_of(headers: Mapping[str, str], own: str | None) -> str | None:
    return headers.get("x-session-id") or own


def encode(ask: Ask, tokenizer: Any) -> list[int]:
    """The prompt's token ids (ValueError or the template's error when it cannot be rendered)."""
    if ask.messages is not None:
        return tokenizer.encode_chat(ask.messages, tools=ask.tools, **ask.template)
    if isinstance(ask.prompt, list):
        return list(ask.prompt)
    return tokenizer.encode(ask.prompt or "", ask.add_special_tokens)


class Pipeline:
    """prepare (render, constrain, check) → admit; the one owner of each of those steps."""

    def __init__(self, engine: Any, tokenizer: Any, cfg: Any, jobs: Jobs) -> None:
        self.engine, self.tokenizer, self.cfg, self.jobs = engine, tokenizer, cfg, jobs
        self.max_prompt_chars = cfg.limits.max_prompt_chars or PROMPT_CHARS_PER_TOKEN * cfg.max_model_len
        self.compiles = ThreadPoolExecutor(COMPILE_WORKERS, thread_name_prefix="grammar")

    @property
    def context(self) -> Context:
        return Context(self.tokenizer, self.cfg.reasoning_parser)

    async def start(self, to_request: Callable[[Any, Mapping[str, str], Context], Ask], body: Any,
                    request: Request, tenant: str) -> Job:
        """The API's body through its adapter's `to_request`, then prepared and admitted."""
        arrival = time.monotonic()
        self.check_model(body.model)
        ask = await asyncio.to_thread(to_request, body, request.headers, self.context)  # 250k messages take ~1 s
        self.check_ids("logit_bias", [t for t, _ in ask.logit_bias])
        prompt = await self.prompt(ask)
        grammar = await self.constrain(self.structured(ask), tenant)
        params = self.sampling(ask, prompt, grammar[0] if grammar else None)
        rid = f"{_ID_PREFIX[ask.endpoint]}{secrets.token_hex(12)}"
        public = self.cfg.public.public_tokens(prompt) if self.cfg.public and not ask.salt else 0
        session = f"{tenant}/{ask.session}" if ask.session else None
        deltas = await self.jobs.submit(
            request, ask.endpoint, arrival, prompt, params, request_id=rid, session=session, tenant=tenant,
            cache_salt=ask.salt, public_prefix_tokens=public, grammar=grammar[1] if grammar else None)
        return Job(ask, rid, prompt, deltas, session)

    def reply(self, job: Job) -> Reply:
        """The job's reply state machine. With tools, it parses the calls (the one parse of the reply's text) and,
        in a session, tells the engine how the reply ended, for the agent-aware cache policy."""
        ask = job.ask
        tell = functools.partial(self.engine.classify, job.session) if ask.tools and job.session else None
        return Reply(self.cfg.tool_parser if ask.tools else None, ask.think, tell)

    # ---- prepare ------------------------------------------------------------------------------------------
    async def prompt(self, ask: Ask) -> list[int]:
        """The prompt's token ids, checked; counted, rendered and tokenized off the event loop's thread (a legal
        8 MB body takes seconds, and every stream would wait)."""
        if isinstance(ask.prompt, list):
            await asyncio.to_thread(self.check_ids, ask.param, ask.prompt)
            return list(ask.prompt)
        if self.tokenizer is None and ask.messages is not None:
            raise APIError(400, "the model folder has no tokenizer.json: use /v1/completions with token ids")
        if self.tokenizer is None:
            raise APIError(400, "the model folder has no tokenizer.json: send the prompt as token ids", param="prompt")
        await asyncio.to_thread(self.check_chars, ask.param, ask.messages if ask.messages is not None else ask.prompt,
                                ask.tools)
        if ask.messages is not None:
            return await self.render(ask)
        return await asyncio.to_thread(encode, ask, self.tokenizer)

    async def render(self, ask: Ask) -> list[int]:
        """A chat through the model's template; what the template refuses is a 400 naming the API's field."""
        from jinja2.exceptions import TemplateError

        try:  # templates with long tool schemas and long prompts take ms: keep the event loop free
            return await asyncio.to_thread(encode, ask, self.tokenizer)
        except (TemplateError, ValueError) as e:
            raise APIError(400, f"{ask.param}: the chat template refused them: {e}", param=ask.param) from None

    def structured(self, ask: Ask) -> tuple[StructuredOutputsParams, str] | None:
        """What the reply is held to, and the field that asked: a forced tool call first, else a JSON format."""
        forced = forced_call(self.cfg.tool_parser, ask.tools, ask.forced_tool, ask.parallel_tool_calls, self.literal)
        if forced is not None:
            return forced, "tool_choice"
        spec = json_reply(*ask.json_format) if ask.json_format else None
        return (spec, ask.format_param) if spec is not None else None

    def literal(self, text: str) -> str:
        """A piece of a tool-call grammar (only forced calls ask: a tokenizer llguidance cannot read is a 400)."""
        try:
            return self.engine.llm.grammars.literal(text)
        except ValueError as e:
            raise APIError(400, f"tool_choice: {e}", param="tool_choice") from None

    async def constrain(self, given: tuple[StructuredOutputsParams, str] | None, tenant: str,
                        ) -> tuple[StructuredOutputsParams, Any] | None:
        """The spec compiled, once for this request, off the event loop and on at most COMPILE_WORKERS threads;
        what the grammar engine refuses is a 400."""
        if given is None:
            return None
        spec, param = given
        try:
            compiled = await asyncio.get_running_loop().run_in_executor(
                self.compiles, self.engine.llm.grammars.compile, spec, tenant)
            return spec, compiled
        except ValueError as e:
            raise APIError(400, f"{param}: {e}", param=param) from None

    def sampling(self, ask: Ask, prompt: list[int], spec: StructuredOutputsParams | None) -> SamplingParams:
        """The window checked (the one place the server does) and the engine's sampling parameters."""
        limit, asked = self.cfg.max_model_len, ask.max_tokens
        if len(prompt) >= limit or (asked is not None and len(prompt) + asked > limit):
            raise APIError(400, f"this model's maximum context length is {limit} tokens; the prompt has "
                           f"{len(prompt)} tokens" + (f" and max_tokens asks for {asked} more" if asked else ""),
                           param=ask.param, code="context_length_exceeded")
        try:
            return SamplingParams(max_tokens=asked or limit - len(prompt),
                                  temperature=0.0 if ask.temperature < GREEDY_BELOW else ask.temperature,
                                  top_p=ask.top_p, top_k=ask.top_k, seed=ask.seed, stop=ask.stop,
                                  ignore_eos=ask.ignore_eos, structured_outputs=spec, logit_bias=ask.logit_bias)
        except ValueError as e:
            raise APIError(400, str(e)) from None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.cfg.model_name, *self.cfg.aliases)

    def check_model(self, model: str) -> None:
        if model not in self.names:
            raise APIError(404, f"model {model!r} does not exist: this server serves "
                           f"{', '.join(map(repr, self.names))}", param="model", code="model_not_found")

    def check_chars(self, param: str, *texts: Any) -> None:
        """Refuse a prompt too long to be worth tokenizing (tokenizing megabytes stalls every stream)."""
        n, limit = sum(text_chars(t) for t in texts), self.max_prompt_chars
        if n > limit:
            raise APIError(400, f"{param}: {n} characters, over this server's limit of {limit} (--max-prompt-chars)",
                           param=param, code="context_length_exceeded")

    def check_ids(self, param: str, ids: list[int]) -> None:
        """Token ids a client sent: each must name a row of the model's vocabulary."""
        vocab = self.cfg.vocab_size
        if not all(0 <= t < vocab for t in ids):
            raise APIError(400, f"{param}: token ids must be in [0, {vocab})", param=param)


_ID_PREFIX = {"chat": "chatcmpl-", "completions": "cmpl-", "messages": "msg_", "responses": "resp_"}
