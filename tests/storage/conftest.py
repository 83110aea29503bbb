"""A real redis-server per test module, on a free 127.0.0.1 port with its own temp dir, killed at teardown."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from agentkv.storage import BlockKey, chain_keys, namespace_digest

PAGE = 4096 + 512  # bytes per page: small, not a power of two


class RedisServer:
    """One redis-server process; `kill` and `start` again on the same port to simulate an outage."""

    def __init__(self, folder: Path, maxmemory: str | None = None) -> None:
        self.folder = folder
        self.maxmemory = maxmemory
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(self.port),
                "--bind", "127.0.0.1", "--dir", str(self.folder), "--save", "", "--appendonly", "no"]
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "allkeys-lru"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def _server(tmp_path_factory, maxmemory=None):
    if shutil.which("redis-server") is None and not Path("/usr/bin/redis-server").exists():
        pytest.fail("redis-server is not installed (the README's test command installs it)")
    srv = RedisServer(tmp_path_factory.mktemp("redis"), maxmemory)
    srv.start()
    return srv


@pytest.fixture
def redis_server(tmp_path_factory):
    srv = _server(tmp_path_factory)
    yield srv
    srv.kill()


@pytest.fixture
def small_redis(tmp_path_factory):
    """A server whose maxmemory holds a few dozen pages, evicting least recently used keys."""
    srv = _server(tmp_path_factory, maxmemory="2mb")
    yield srv
    srv.kill()


def make_blocks(n: int, salt: str = "model|bf16|tenant-a", seed: int = 0) -> tuple[list[BlockKey], torch.Tensor]:
    """n chained keys of 16-token blocks and n random pages."""
    rng = np.random.default_rng(seed)
    keys = chain_keys(rng.integers(0, 50_000, size=16 * n), 16, namespace_digest(salt))
    return keys, torch.from_numpy(rng.integers(0, 256, size=(n, PAGE), dtype=np.uint8))
