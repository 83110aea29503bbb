"""OpenAI Chat Completions and Completions request/response bodies, as the official client sends and reads them.

Requests validate strictly where a wrong value would change the answer (n, logprobs, penalties we do not
implement are refused, not ignored) and loosely elsewhere (unknown fields are ignored, as OpenAI does).
Extensions, vLLM-style: `top_k`, `ignore_eos`, `cache_salt`, `return_token_ids`, `chat_template_kwargs` on
requests; `prompt_tokens_details.cached_tokens_per_tier` on usage; with `return_token_ids`, vLLM's
`prompt_token_ids` (on a chat response, on a completion's choice) and `token_ids` (on the choice; streamed:
each chunk's new ones).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from jinja2.defaults import DEFAULT_NAMESPACE
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from agentkv.engine.sequence import BIAS_MAX
from agentkv.engine.tokenizer import TEMPLATE_GLOBALS
from agentkv.server.fields import Body as _Body
from agentkv.server.fields import MaxTokens, Seed, Stops, TopK
from agentkv.server.media import TextOnly


class TextPart(_Body):
    type: Literal["text"]
    text: str


class FunctionCall(_Body):
    name: str
    arguments: str = "{}"  # a JSON object, as text


class ToolCall(_Body):
    id: str = ""
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str | list[TextPart] | None, TextOnly] = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDef(_Body):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Tool(_Body):
    type: Literal["function"] = "function"
    function: FunctionDef


class NamedFunction(_Body):
    name: str


class NamedToolChoice(_Body):
    type: Literal["function"] = "function"
    function: NamedFunction


class JSONSchemaFormat(_Body):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    """`text`, `json_object` (any JSON object) or `json_schema`: the last two are enforced by the grammar engine."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object")
        return self


RENDER_OWN = frozenset({"messages", "tools", "add_generation_prompt", "add_special_tokens", "param", "bos_token",
                        "eos_token", "pad_token", "unk_token"})  # what the server itself gives the template
# the template's functions (jinja's `namespace`, `range`, ..., and the tokenizer's): a variable of that name
# would replace the function, and the template would fail calling it
TEMPLATE_FUNCTIONS = frozenset((*DEFAULT_NAMESPACE, *TEMPLATE_GLOBALS))


def template_kwargs(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """vLLM's `chat_template_kwargs` (e.g. Qwen3's `enable_thinking`): more variables for the chat template,
    none of the ones the server sets itself."""
    taken = sorted(RENDER_OWN.intersection(value or ()))
    if taken:
        raise ValueError(f"{', '.join(taken)}: set by the server, not in chat_template_kwargs")
    functions = sorted(TEMPLATE_FUNCTIONS.intersection(value or ()))
    if functions:
        raise ValueError(f"{', '.join(functions)}: the chat template's own functions, not variables to set")
    return value


TemplateKwargs = Annotated[dict[str, Any] | None, AfterValidator(template_kwargs)]


# token id (JSON keys are text: "50256") -> added to its logit, in OpenAI's range; at most 1,024 of them (this
# server's bound, not a published one: each is one entry of the sampler's per-step scatter)
LogitBias = Annotated[dict[int, Annotated[float, Field(ge=-BIAS_MAX, le=BIAS_MAX)]], Field(max_length=1024)]


class StreamOptions(_Body):
    include_usage: bool = False


class Sampling(_Body):
    """What both endpoints share: sampling as OpenAI defines it, plus the vLLM-style extensions."""

    model: str
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: TopK = 0  # extension
    n: int = Field(1, ge=1, le=1, description="only n=1 is supported")
    stop: Annotated[str, Field(max_length=1024)] | Stops | None = None
    seed: Seed | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=0, le=0, description="penalties are not implemented: only 0")
    frequency_penalty: float = Field(0.0, ge=0, le=0, description="penalties are not implemented: only 0")
    user: str | None = Field(None, max_length=512)
    ignore_eos: bool = False  # extension: generate exactly max_tokens
    cache_salt: str | None = Field(None, max_length=256)  # extension: a private cache namespace
    return_token_ids: bool = False  # extension: the prompt's and the reply's token ids, as the engine saw them
    logit_bias: LogitBias | None = None

    @property
    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    response_format: ResponseFormat | None = None
    logprobs: Literal[False] | None = None
    chat_template_kwargs: TemplateKwargs = None  # extension

    @property
    def forced_tool(self) -> str | None:
        """What `tool_choice` forces: None (the model decides), "*" (any tool) or a tool's name."""
        if isinstance(self.tool_choice, NamedToolChoice):
            return self.tool_choice.function.name
        return "*" if self.tool_choice == "required" else None

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(Sampling):
    prompt: str | list[int] = Field(description="one prompt: text or token ids")
    max_tokens: MaxTokens = 16
    echo: Literal[False] = False
    best_of: int | None = Field(None, ge=1, le=1, description="only best_of=1 (= n) is supported")
    logprobs: None = None
    suffix: None = None

    @model_validator(mode="after")
    def _not_empty(self) -> CompletionRequest:
        if not self.prompt:
            raise ValueError("prompt is empty")
        return self


class TokenizeRequest(_Body):
    """vLLM's /tokenize: a prompt, or a chat as the model's template renders it (what a client needs to count
    or place tokens exactly, e.g. a replay keeping block boundaries). Not an OpenAI endpoint, so not its rule
    either: an unknown field is a 400 naming it (`token_strs` asks for nothing; vLLM's flag is
    `return_token_strs`, its answer `token_strs`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | None = None
    add_generation_prompt: bool = True  # a chat: end with the assistant's header, as a request would
    chat_template_kwargs: TemplateKwargs = None
    add_special_tokens: bool | None = None  # default: yes for a prompt; a chat's template writes its own
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either 'prompt' or 'messages'")
        return self


class DetokenizeRequest(_Body):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    model: str | None = None
    tokens: list[Annotated[int, Field(ge=0)]]


# ---- responses --------------------------------------------------------------------------------------------
class PromptTokensDetails(BaseModel):
    cached_tokens: int
    cached_tokens_per_tier: dict[str, int]  # extension: where the cached prefix was found (gpu, dram, ...)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class ResponseMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: ResponseMessage
    finish_reason: str
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    finish_reason: str
    logprobs: None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "agentkv"
    root: str  # the served model this name is an alias of (vLLM's field)
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
