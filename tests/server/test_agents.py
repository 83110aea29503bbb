"""Real coding agents, unmodified, against `agentkv serve` on 127.0.0.1: Claude Code (`claude -p`, Anthropic
Messages), Codex CLI (`codex exec`, the Responses API), Qwen Code (`qwen -p`, OpenAI chat) and the OpenAI
Agents SDK (Python, the Responses API). Each is installed from its registry here at the version pyproject.toml
pins (npm agents from [tool.agentkv.agents] into a cache folder, `AGENTKV_AGENTS_CACHE`, default
~/.cache/agentkv-agents; the SDK by the `test` extra), configured only
by its documented base-URL / key settings, and runs one non-interactive turn twice over the chat checkpoint
(short replies, a 128k window). Each turn must finish without a protocol error, and the second must find the
agent's system prompt and tool schemas in the prefix cache.

What the agents send is measured from the server's side (its render of each request, its per-request log
line), printed, and checked against the row docs/ECONOMICS.md (f) prints for that agent and version. Without
npm or a reachable registry the tests skip and say so; with `CI` set they fail.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import pytest

from tests.conftest import unavailable

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NPM_AGENTS: dict[str, str] = PYPROJECT["tool"]["agentkv"]["agents"]  # package → pinned version
ECONOMICS = (ROOT / "docs" / "ECONOMICS.md").read_text()
CACHE = Path(os.environ.get("AGENTKV_AGENTS_CACHE", Path.home() / ".cache" / "agentkv-agents"))
PROMPT = "say hi"
LOG_LINE = re.compile(r"^\w+ (\S+): (\d+) prompt tokens \((\d+) cached\)")


@dataclass(slots=True)
class Request:
    prompt: int  # tokens
    cached: int
    head: int  # tokens of the system block (system prompt and tool schemas) at the prompt's start
    system: int  # tokens of the system prompt alone
    tools: int  # tokens the tool schemas add
    n_tools: int
    chars: int  # characters of the system prompt and the tools' JSON


@pytest.fixture(scope="module")
def agent_server(start, chat_dir):
    return start("--model", str(chat_dir), "--served-model-name", "chat", "chat-small", "--kv-cache-gb", "0.05",
                 "--max-batched-tokens", "4096")


@pytest.fixture
def tap(agent_server, monkeypatch, caplog):
    """Every rendered request (messages and tools, as the template saw them) and the server's log lines."""
    server = agent_server.app.state.server
    seen: list[tuple[list, list | None]] = []
    render = server.pipe.render

    async def recording(ask):
        seen.append((ask.messages, ask.tools))
        return await render(ask)

    monkeypatch.setattr(server.pipe, "render", recording)
    caplog.set_level(logging.INFO, logger="agentkv.server")
    return server, seen, caplog


def npm_agent(package: str, binary: str) -> Path:
    """`npm install` of the pinned version into the cache folder (a no-op when it is there): its executable."""
    pinned = NPM_AGENTS[package]
    if shutil.which("npm") is None:
        unavailable("npm is not on PATH (the README's test command installs Debian's npm)")
    prefix = CACHE / f"{package.strip('@').replace('/', '_')}-{pinned}"
    prefix.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix), f"{package}@{pinned}"],
                       capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        ping = subprocess.run(["npm", "ping"], capture_output=True, text=True, timeout=60)
        if ping.returncode != 0:
            unavailable(f"the npm registry is unreachable (npm ping: {ping.stderr.strip()[-200:]})")
        pytest.fail(f"npm install {package}@{pinned} failed: {r.stderr.strip()[-2000:]}")
    check_node(package, json.loads((prefix / "node_modules" / package / "package.json").read_text()))
    return prefix / "node_modules" / ".bin" / binary


def check_node(package: str, manifest: dict) -> None:
    """npm only warns when node is older than a package's `engines`; the agent then dies on a syntax error.
    Say which node it needs instead (Debian 12's npm brings node 18; Qwen Code needs 20)."""
    floor = re.fullmatch(r">=\s*(\d+)(?:\.\d+)*", manifest.get("engines", {}).get("node", ">=0"))
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    assert floor and int(node.lstrip("v").split(".")[0]) >= int(floor[1]), (
        f"{package}@{manifest['version']} needs node {manifest['engines']['node']}; this node is {node}")


def run_twice(cmd: list[str], env: dict[str, str], tmp_path: Path, tap) -> list[Request]:
    """The same turn twice, as a user runs it twice (same folder, same home); the main request of each turn
    (the longest prompt: agents also send short side requests, e.g. titles or memory)."""
    server, seen, caplog = tap
    turns = []
    for i in range(2):
        home, work = tmp_path / "home", tmp_path / "work"
        (home / ".codex").mkdir(parents=True, exist_ok=True)
        work.mkdir(exist_ok=True)
        seen.clear()
        caplog.clear()
        r = subprocess.run(cmd, cwd=work, env={"PATH": os.environ["PATH"], "HOME": str(home),
                                               "CODEX_HOME": str(home / ".codex"), **env},
                           stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"turn {i}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        counts = [LOG_LINE.match(rec.getMessage()) for rec in caplog.records]
        counts = [(int(m[2]), int(m[3])) for m in counts if m]
        assert counts and len(counts) == len(seen), f"turn {i}: {len(seen)} requests, {len(counts)} answered"
        k = max(range(len(counts)), key=lambda j: counts[j][0])
        turns.append(measure(server.tokenizer, *seen[k], *counts[k]))
    return turns


def measure(tok, messages: list[dict], tools: list | None, prompt: int, cached: int) -> Request:
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    head = len(tok.encode_chat(system, tools=tools, add_generation_prompt=False)) if system or tools else 0
    bare = len(tok.encode_chat(system, tools=None, add_generation_prompt=False)) if system else 0
    text = system[0]["content"] if system else ""
    chars = len(text) + sum(len(json.dumps(t)) for t in tools or [])
    return Request(prompt, cached, head, len(tok.encode(text, add_special_tokens=False)) if text else 0,
                   head - bare if tools else 0, len(tools or []), chars)


AGENTS = {  # test name → (row label in docs/ECONOMICS.md (f), version under test)
    "claude-code": ("Claude Code", NPM_AGENTS["@anthropic-ai/claude-code"]),
    "codex": ("Codex CLI", NPM_AGENTS["@openai/codex"]),
    "qwen-code": ("Qwen Code", NPM_AGENTS["@qwen-code/qwen-code"]),
    "openai-agents": ("OpenAI Agents SDK", version("openai-agents")),
}


def published(name: str) -> dict[str, int]:
    """The figures docs/ECONOMICS.md (f) prints for this agent at the version under test."""
    label, ver = AGENTS[name]
    row = re.search(rf"^\| {re.escape(label)} {re.escape(ver)}(?: \([^)]*\))? \| [^|]+ \| ([\d,]+) \| ([\d,]+) "
                    rf"\| ([\d,]+) \((\d+)\) \| ([\d,]+) \|", ECONOMICS, re.M)
    assert row, f"docs/ECONOMICS.md (f) has no row for {label} {ver}: re-measure it (pytest -s) and update the table"
    keys = ("prompt", "system", "tools", "n_tools", "chars")
    return {k: int(v.replace(",", "")) for k, v in zip(keys, row.groups(), strict=True)}


def check_and_report(name: str, turns: list[Request], block: int = 16) -> None:
    first, second = turns
    assert first.prompt == second.prompt, "an identical turn renders the same prompt length"
    assert first.head > 1000 or name == "openai-agents", f"{name}: a real agent's system block is long"
    assert second.cached >= first.head // block * block, (
        f"{name}: the second turn found {second.cached} cached tokens, fewer than its system block ({first.head})")
    print(f"\nAGENT {name} {AGENTS[name][1]}: prompt {first.prompt} tokens; system block {first.head} tokens "
          f"(system prompt {first.system}, {first.n_tools} tools {first.tools}); {first.chars} characters; "
          f"second turn cached {second.cached}/{second.prompt} = {second.cached / second.prompt:.1%}")
    doc = published(name)
    assert first.n_tools == doc["n_tools"], (name, first.n_tools, doc)
    # characters move with the date and folder an agent writes into its prompt; tokens also by a few with the
    # test tokenizer, trained on this repository's sources at test time
    assert first.chars == pytest.approx(doc["chars"], rel=0.01), (name, first.chars, doc)
    for key, measured in (("prompt", first.prompt), ("system", first.system), ("tools", first.tools)):
        assert measured == pytest.approx(doc[key], rel=0.03, abs=8), (name, key, measured, doc)


def test_the_agents_sdk_is_the_pinned_version():
    pin = next(d for d in PYPROJECT["project"]["optional-dependencies"]["test"] if d.startswith("openai-agents"))
    assert pin == f"openai-agents=={version('openai-agents')}", "reinstall the test extra: pip install -e '.[test]'"


def test_claude_code(agent_server, tap, tmp_path):
    claude = npm_agent("@anthropic-ai/claude-code", "claude")
    env = {"ANTHROPIC_BASE_URL": agent_server.url, "ANTHROPIC_API_KEY": "none",
           "ANTHROPIC_SMALL_FAST_MODEL": "chat-small", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
    check_and_report("claude-code", run_twice([str(claude), "-p", PROMPT, "--model", "chat"], env, tmp_path, tap))


def test_codex_cli(agent_server, tap, tmp_path):
    codex = npm_agent("@openai/codex", "codex")
    provider = ["-c", "model_provider=agentkv", "-c", 'model_providers.agentkv.name="agentkv"',
                "-c", f'model_providers.agentkv.base_url="{agent_server.url}/v1"',
                "-c", 'model_providers.agentkv.env_key="AGENTKV_API_KEY"',
                "-c", 'web_search="disabled"']  # a hosted tool: this server runs none (a 400 says so)
    cmd = [str(codex), "exec", "--skip-git-repo-check", *provider, "-m", "chat", PROMPT]
    check_and_report("codex", run_twice(cmd, {"AGENTKV_API_KEY": "none"}, tmp_path, tap))


def test_qwen_code(agent_server, tap, tmp_path):
    qwen = npm_agent("@qwen-code/qwen-code", "qwen")
    env = {"OPENAI_BASE_URL": agent_server.url + "/v1", "OPENAI_API_KEY": "none", "OPENAI_MODEL": "chat"}
    check_and_report("qwen-code", run_twice([str(qwen), "-p", PROMPT], env, tmp_path, tap))


AGENTS_SDK = '''
from agents import Agent, Runner, function_tool

@function_tool
def read_file(path: str) -> str:
    """Read a file of the workspace."""
    return open(path).read()

@function_tool
def run(cmd: str) -> str:
    """Run a shell command in the workspace."""
    return ""

agent = Agent(name="coder", model="chat", tools=[read_file, run],
              instructions="You are a coding agent. Use the tools to inspect and change the workspace.")
result = Runner.run_sync(agent, "say hi")
print(repr(result.final_output))
'''


def test_openai_agents_sdk(agent_server, tap, tmp_path):
    env = {"OPENAI_BASE_URL": agent_server.url + "/v1", "OPENAI_API_KEY": "none",
           "OPENAI_AGENTS_DISABLE_TRACING": "1", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    check_and_report("openai-agents", run_twice([sys.executable, "-c", AGENTS_SDK], env, tmp_path, tap))

