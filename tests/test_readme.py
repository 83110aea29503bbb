"""Every command in the README, run as written with tiny inputs, so the README cannot drift from the code.

Each `bash` block line (and each part of an `a && b` line) is either run, after the substitutions below shrink
its inputs (a two-session slice of the real traces, a tiny checkpoint, MiB for GiB, a real redis-server on a
free port), or is an install step this test cannot take (venv, pip, apt: no network here) or the test suite
itself. A README command of any other kind fails the test until it is covered here. The Python blocks run too,
against the servers the README starts before them.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import CLAUDE_CODE, MOONCAKE, need

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
NOT_RUN = ("python3 -m venv", ".venv/bin/pip ", "(command -v redis-server", ".venv/bin/ruff check",
           ".venv/bin/python -m pytest",  # installs (no network here) and the suite itself
           "ANTHROPIC_BASE_URL=", "OPENAI_BASE_URL=",  # the agents: tests/server/test_agents.py runs them from npm
           "agentkv serve --model /path/to/Qwen2.5-7B-Instruct --replicas")  # tests/cluster/test_ray_serve.py
SMALLER = [  # (README text, what runs instead)
    ("../shared/data/traces/claude-code --endpoint", "{late} --endpoint"),  # replay: sub-agents 440,243 s in
    ("../shared/data/traces/claude-code", "{claude}"),
    ("../shared/data/traces/mooncake", "{mooncake}"),
    ("/path/to/Llama-3.1-8B-Instruct", "{ckpt}"),
    ("/path/to/Qwen2.5-7B-Instruct", "{ckpt}"),
    ("--sessions 500", "--sessions 4"),
    ("--sessions 20", "--sessions 1"),
    ("dram=8GiB", "dram=8MiB"),
    ("disk=100GiB@/mnt/nvme/agentkv", "disk=64MiB@{tmp}/kv"),
    ("redis=20GiB@redis://127.0.0.1:6379", "redis=16MiB@redis://127.0.0.1:{redis}"),
    ("--port 8000", "--port {port}"),
    ("127.0.0.1:8000", "127.0.0.1:{port}"),
    ("bench.train_tiny --out models/tiny-stdlib", "bench.train_tiny --out models/tiny-stdlib --minutes 0.05 "
                                                  "--chars 300000"),
    ("bench.policy_headroom", "bench.policy_headroom --trace {claude} --capacity 32k"),
    (".venv/bin/agentkv ", "agentkv "),
    ("max_tokens=256", "max_tokens=8"),
]
MORE = {"agentkv report": " --gen-sessions 2",  # where no PATH is given: a two-session workload
        "agentkv trace stats --fit": " --gen-sessions 2",
        "agentkv generate": " --max-tokens 8"}


def bash_commands() -> list[str]:
    """README bash lines, continuations joined, comments dropped, `a && b` split into parts."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            out += [p.strip() for p in top_level_parts(line)] if line else []
    return out


def top_level_parts(line: str) -> list[str]:
    """`a && b && (c && d)` → a, b, (c && d)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(line):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and line.startswith(" && ", i):
            parts.append(line[start:i])
            start = i + 4
    return [*parts, line[start:]]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.S)


COMMANDS = bash_commands()
RUN = [c for c in COMMANDS if not c.startswith(NOT_RUN)]


def test_every_readme_command_is_covered():
    known = ("agentkv ", ".venv/bin/agentkv ", "python -m bench.", "printf ", "echo ")
    assert [c for c in RUN if not c.startswith(known)] == []
    assert len(RUN) >= 18 and len(python_blocks()) == 2


class World:
    """The scratch folder the README's commands run in, with tiny stand-ins for their inputs."""

    def __init__(self, tmp: Path) -> None:
        from tests.engine.conftest import write_checkpoint

        self.tmp = tmp
        claude = tmp / "claude-code"
        claude.mkdir()
        for name in ("trace_0002.json.gz", "trace_0014.json.gz"):  # 0014 runs a sub-agent
            shutil.copy(need(CLAUDE_CODE / name), claude / name)
        self.fill = {"claude": str(claude), "mooncake": str(need(MOONCAKE).parent), "tmp": str(tmp),
                     "ckpt": str(write_checkpoint(tmp / "ckpt", "llama3", seed=1)), "late": str(late_subagents(tmp))}
        (tmp / "traffic.txt").write_text("the agent reads a file and calls a tool then writes code\n" * 40)
        self.redis = subprocess.Popen(["redis-server", "--port", str(free_port()), "--save", "", "--appendonly",
                                       "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.fill["redis"] = str(self.redis.args[2])
        self.servers: dict[str, tuple[subprocess.Popen, int]] = {}
        self.done: dict[str, subprocess.CompletedProcess] = {}

    def argv(self, command: str, port: int | None = None) -> list[str]:
        for old, new in SMALLER:
            command = command.replace(old, new)
        command += next((more for start, more in MORE.items() if command.startswith(start)), "")
        words = shlex.split(fill(command, **self.fill, port=port or 0).removesuffix("&").strip())
        if words[0] == "agentkv":
            return [sys.executable, "-m", "agentkv.cli", *words[1:]]
        if words[:2] == ["python", "-m"]:
            return [sys.executable, *words[1:]]
        return words

    def run(self, command: str, port: int | None = None) -> subprocess.CompletedProcess:
        """Each command once: a later one that needs its output (a server, its model) reuses it."""
        if command not in self.done:
            argv = self.argv(command, port)
            shell = argv[0] in ("printf", "echo")  # shell built-ins writing the README's small files
            self.done[command] = subprocess.run(command if shell else argv, shell=shell, cwd=self.tmp,
                                                capture_output=True, text=True, timeout=300, env=env())
        return self.done[command]

    def serve(self, command: str) -> int:
        """The README's serve command, started once (on a free port); returns its port."""
        if command not in self.servers:
            for before in RUN[: RUN.index(command)]:  # what it needs: the files and model made before it
                if before.startswith(("printf", "echo", "python -m bench.train_tiny")):
                    self.run(before)
            port = free_port()
            proc = subprocess.Popen(self.argv(command, port), cwd=self.tmp, env=env(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
            self.servers[command] = (proc, port)
            wait_healthy(proc, port)
        return self.servers[command][1]

    def close(self) -> None:
        for proc, _ in self.servers.values():
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=60)
        self.redis.terminate()
        self.redis.wait(30)


def late_subagents(tmp: Path) -> Path:
    """trace_0004 cut to its first 3 turns and its two sub-agents' first 3 each: they start 440,243 s into the
    session, after the last turn kept, so the replay example finishes only if --max-think caps that wait too."""
    doc = json.loads(gzip.decompress(need(CLAUDE_CODE / "trace_0004.json.gz").read_bytes()))
    subs = [{**r, "requests": r["requests"][:3]} for r in doc["requests"] if r.get("type") == "subagent"]
    assert len(subs) == 2 and min(r["t"] for r in subs) > 440_000
    doc["requests"] = [r for r in doc["requests"] if r.get("type") != "subagent"][:3] + subs
    folder = tmp / "late-subagents"
    folder.mkdir()
    (folder / "trace_0004.json").write_text(json.dumps(doc))
    return folder


def fill(text: str, **values: object) -> str:
    """`{name}` placeholders of SMALLER filled in (text with other braces, e.g. Python dicts, left alone)."""
    for name, value in values.items():
        text = text.replace("{" + name + "}", str(value))
    return text


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(proc: subprocess.Popen, port: int) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the README's server did not start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = World(tmp_path_factory.mktemp("readme"))
    yield w
    w.close()


def serve_before(command: str) -> str:
    """The README's last serve command before `command`: the server it talks to."""
    return [c for c in RUN[: RUN.index(command)] if c.startswith("agentkv serve")][-1]


def run_readme(world: World, command: str) -> subprocess.CompletedProcess | None:
    """The README's command in the world: a server started (None), anything else run to its end."""
    if command.startswith("agentkv serve"):
        world.serve(command)
        return None
    port = world.serve(serve_before(command)) if "127.0.0.1:8000" in command else None
    return world.run(command, port)


@pytest.mark.parametrize("command", RUN, ids=[c[:60] for c in RUN])
def test_readme_command_runs(world, command):
    r = run_readme(world, command)
    if r is None:
        proc, port = world.servers[command]
        assert proc.poll() is None and port
        return
    assert r.returncode == 0, f"{command}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr


INPUTS = {"claude-code", "late-subagents", "ckpt", "traffic.txt", "kv"}  # the stand-ins this test writes (and the disk tier's folder)


def test_what_the_readme_commands_create_git_ignores(world):
    """Run from a clone, the README's commands leave nothing `git status` would offer to commit."""
    for command in RUN:
        run_readme(world, command)
    made = sorted(p.name + "/" * p.is_dir() for p in world.tmp.iterdir() if p.name not in INPUTS)
    assert made  # the report, the replay's folder, the keys file, ...
    r = subprocess.run(["git", "check-ignore", "--no-index", "--verbose", "--non-matching", *made], cwd=ROOT,
                       capture_output=True, text=True)
    assert [line.split("\t")[1] for line in r.stdout.splitlines() if line.startswith("::")] == []


@pytest.mark.parametrize("block", range(2), ids=["engine", "openai client"])
def test_readme_python_runs(world, block):
    code = python_blocks()[block]
    for old, new in SMALLER:
        code = code.replace(old, new)
    port = None
    if "127.0.0.1:{port}" in code:  # the client block: the README's serve command for it
        port = world.serve(next(c for c in RUN if c.startswith("agentkv serve") and "qwen2.5-7b" in c))
    code = fill(code, **world.fill, port=port)
    r = subprocess.run([sys.executable, "-c", code], cwd=world.tmp, capture_output=True, text=True, timeout=300,
                       env=env())
    assert r.returncode == 0, r.stderr[-3000:]
