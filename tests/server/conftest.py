"""Real servers on 127.0.0.1 over tiny real checkpoints.

- `plain_dir`: the engine tests' random Llama 3 checkpoint and word-level tokenizer.
- `tool_dir`: a Llama checkpoint written so that its greedy (and, its logits being 80 apart, any sampled)
  output is a Hermes tool call after a chat prompt: one-hot embeddings, attention and MLP outputs zeroed,
  and an LM head that maps each token to its successor in a script. It is a real model run by the real
  engine; only its weights are chosen, so the tool-call parser sees what a real model would stream.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from tests.engine.conftest import write_chat_checkpoint, write_checkpoint

QWEN_TEMPLATE = """{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}
{{- "\\n\\n# Tools\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
{%- for tool in tools %}{{- "\\n" }}{{- tool | tojson }}{%- endfor %}
{{- "\\n</tools>\\n\\nFor each function call, return a json object within <tool_call></tool_call> XML tags<|im_end|>\\n" }}
{%- else %}
{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- for message in messages %}
{%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
{%- elif message.role == "assistant" %}
{{- '<|im_start|>' + message.role }}
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\\n<tool_call>\\n{"name": "' }}{{- tool_call.name }}{{- '", "arguments": ' }}{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == "tool" %}
{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' }}{{- message.content }}{{- '\\n</tool_response>' }}
{%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"""

# Qwen3's switch: with enable_thinking false the template closes an empty think block for the model
THINKING_TEMPLATE = QWEN_TEMPLATE.replace(
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}")
assert THINKING_TEMPLATE != QWEN_TEMPLATE

TOOL_SPECIAL = ["<|im_start|>", "<|im_end|>", "[UNK]"]
TOOL_SCRIPT = ["<tool_call>", '{"name":', '"read_file",', '"arguments":', '{"path":', '"a.py"}}', "</tool_call>"]
TOOL_WORDS = ["system", "user", "assistant", "tool", "you", "are", "a", "helpful", "read", "the", "file", "please",
              "done", "<tool_response>", "</tool_response>", "<tools>", "</tools>"]
TOOL_VOCAB = 64


def write_tool_checkpoint(folder: Path, script: list[str] = TOOL_SCRIPT, after: str = "assistant",
                          template: str = QWEN_TEMPLATE) -> Path:
    """A checkpoint whose output after the token `after` is `script` token by token, then <|im_end|>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM

    names = TOOL_SPECIAL + TOOL_WORDS + script
    vocab = {t: i for i, t in enumerate(names)}
    tok = Tokenizer(models.WordLevel({t: i for t, i in vocab.items() if t not in script}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(TOOL_SPECIAL)
    tok.add_tokens([t for t in names if t.startswith(("<", "{", '"', "}"))])
    assert all(tok.token_to_id(t) == i for t, i in vocab.items()), "token ids must follow the script's layout"
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|im_end|>", "chat_template": template}))
    eos = vocab["<|im_end|>"]
    cfg = LlamaConfig(vocab_size=TOOL_VOCAB, hidden_size=TOOL_VOCAB, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, eos_token_id=eos)
    model = LlamaForCausalLM(cfg)
    successor = torch.full((TOOL_VOCAB,), eos)
    chain = [vocab[after]] + [vocab[t] for t in script]
    for a, b in itertools.pairwise(chain):
        successor[a] = b
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(TOOL_VOCAB))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        head = torch.zeros(TOOL_VOCAB, TOOL_VOCAB)
        head[successor, torch.arange(TOOL_VOCAB)] = 10.0
        model.lm_head.weight.copy_(head)
    model.float().eval().save_pretrained(str(folder))
    return folder


class LiveServer:
    """`agentkv serve` flags -> the real app, run by uvicorn on a free loopback port in a thread."""

    def __init__(self, flags: list[str]) -> None:
        import uvicorn

        from agentkv.cli import build_parser
        from agentkv.server.serve import build

        self.app = build(build_parser().parse_args(["serve", *flags]))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.uvicorn = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uvicorn.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)

    @property
    def engine(self):
        return self.app.state.server.engine

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="session")
def plain_dir(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("plain"), "llama3", seed=3)


@pytest.fixture(scope="session")
def tool_dir(tmp_path_factory) -> Path:
    return write_tool_checkpoint(tmp_path_factory.mktemp("tool"))


@pytest.fixture(scope="session")
def chat_dir(tmp_path_factory) -> Path:
    """The BPE chat checkpoint (short replies, a thinking template) with a window for agents' prompts."""
    return write_chat_checkpoint(tmp_path_factory.mktemp("chat"), THINKING_TEMPLATE, max_len=131072)


@pytest.fixture(scope="session")
def start() -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def run(*flags: str) -> LiveServer:
        servers.append(LiveServer(list(flags)))
        return servers[-1]

    yield run
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def chat_server(start, chat_dir) -> LiveServer:
    """The chat checkpoint served under its own name and an alias (agents ask for a small model too)."""
    return start("--model", str(chat_dir), "--served-model-name", "chat", "chat-small", "--kv-cache-gb", "0.05",
                 "--max-batched-tokens", "4096")


@pytest.fixture(scope="session")
def chat_oai(chat_server):
    import openai

    return openai.OpenAI(base_url=chat_server.url + "/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="session")
def chat_anth(chat_server):
    import anthropic

    return anthropic.Anthropic(base_url=chat_server.url, api_key="none", max_retries=0)


@pytest.fixture(scope="session")
def server(start, plain_dir) -> LiveServer:
    """Open (single-tenant) server over the plain checkpoint."""
    return start("--model", str(plain_dir), "--served-model-name", "tiny", "--kv-cache-gb", "0.01",
                 "--max-num-seqs", "8")


class ServerProcess:
    """`python -m agentkv.cli serve ...` in its own process: for signals and for its memory, seen from outside."""

    def __init__(self, flags: list[str], log: Path | None = None, nofile: int | None = None) -> None:
        """log: where its stdout and stderr go (default: the test's); nofile: its descriptor limit."""
        import os
        import resource
        import subprocess
        import sys

        import httpx

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"
        root = Path(__file__).resolve().parents[2]
        out = open(log, "wb") if log is not None else None  # noqa: SIM115 (the child writes it; closed at stop)
        self.proc = subprocess.Popen([sys.executable, "-m", "agentkv.cli", "serve", "--port", str(self.port),
                                      "--log-level", "warning", *flags], cwd=root, stdout=out, stderr=out,
                                     env={**os.environ, "PYTHONPATH": str(root)}, preexec_fn=limit)
        if out is not None:
            out.close()
        deadline = time.monotonic() + 120
        while True:
            assert self.proc.poll() is None, f"server exited with {self.proc.returncode}"
            assert time.monotonic() < deadline, "server did not start"
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)

    def rss_mib(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        return kb / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def spawn() -> Iterator[Callable[..., ServerProcess]]:
    procs: list[ServerProcess] = []

    def run(*flags: str, log: Path | None = None, nofile: int | None = None) -> ServerProcess:
        procs.append(ServerProcess(list(flags), log, nofile))
        return procs[-1]

    yield run
    for p in procs:
        p.stop()
