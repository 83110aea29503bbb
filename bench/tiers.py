"""Bandwidth of each KV tier path against the raw path for the same bytes, measured in the same run.

- disk write / read: `DiskStore.put` / `.get` (records with xxh3 checksums, verified on load) against plain
  `pwritev` / `preadv` of the same pages to one file; reads from the page cache and cold (the files' cached
  pages dropped with posix_fadvise first).
- Redis set / get: `RedisStore.put` / `.get` (records, verified, copied into the caller's tensor) against a raw
  redis-py pipeline of SET / GET of the same page bytes (memoryviews of the tensor's rows) over the same client
  settings, on a redis-server this run starts (or `--redis URL`).
- the mover: a disk read through `Mover.get` (worker thread, future) against the store called directly.

Pages are Llama-3.1-8B's bf16 16-token block by default (32 layers x K,V x 8 heads x 128 x 2 bytes x 16 = 2 MiB).
Run: .venv/bin/python -m bench.tiers [--pages 48] [--page-bytes 2097152] [--redis redis://host:port]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis
import torch

from agentkv.storage import chain_keys, namespace_digest
from agentkv.storage.disk import DiskStore
from agentkv.storage.mover import Mover
from agentkv.storage.redis_store import RedisStore
from bench._common import best_of, machine


def start_redis(folder: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
                             "--bind", "127.0.0.1", "--dir", str(folder), "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL)
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


def drop_cache(folder: Path) -> None:
    for path in folder.glob("*.kv"):
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def paired(ours: Callable[[], object], raw: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Best wall time of each, the two run alternately so that a noisy neighbour hits both alike."""
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for i, fn in enumerate((ours, raw)):
            best[i] = min(best[i], best_of(fn, 1)[0])
    return best[0], best[1]


def row(name: str, nbytes: int, ours: float, raw: float) -> None:
    print(f"{name:<26} {nbytes / ours / 1e9:>9.2f} {nbytes / raw / 1e9:>9.2f} {raw / ours:>8.0%}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=48)
    ap.add_argument("--page-bytes", type=int, default=2 << 20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--redis", help="an existing server's URL (default: start redis-server here)")
    ap.add_argument("--dir", help="folder for the disk files (default: a temp folder)")
    args = ap.parse_args()
    n, pb = args.pages, args.page_bytes
    nbytes = n * pb
    keys = chain_keys(np.arange(16 * n), 16, namespace_digest("bench|bf16|tenant"))
    pages = torch.randint(0, 256, (n, pb), dtype=torch.uint8)
    out = torch.empty_like(pages)
    arr, out_arr = pages.numpy(), out.numpy()
    print(f"machine: {machine()}; {n} pages x {pb / 2**20:g} MiB = {nbytes / 2**20:g} MiB per batch, "
          f"best of {args.repeat}")
    print(f"{'path':<26} {'ours GB/s':>9} {'raw GB/s':>9} {'of raw':>8}")
    rep = args.repeat

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        (folder / "raw").mkdir()
        raw_fd = os.open(folder / "raw" / "pages.kv", os.O_RDWR | os.O_CREAT, 0o644)

        def raw_write() -> None:
            for i in range(n):
                os.pwrite(raw_fd, arr[i], i * pb)

        def raw_read() -> None:
            for i in range(n):
                os.preadv(raw_fd, [out_arr[i]], i * pb)

        store = DiskStore(folder / "store", 2 * nbytes, pb)

        def disk_write() -> None:
            store.drop(keys)
            store.put(keys, pages)

        row("disk write (page cache)", nbytes, *paired(disk_write, raw_write, rep))
        row("disk read (page cache)", nbytes, *paired(lambda: store.get(keys, out), raw_read, rep))
        assert store.get(keys, out).all() and torch.equal(out, pages)

        def cold(fn: Callable[[], object]) -> Callable[[], object]:
            def run() -> object:
                drop_cache(folder / "store")
                drop_cache(folder / "raw")
                return fn()
            return run

        row("disk read (cold)", nbytes, *paired(cold(lambda: store.get(keys, out)), cold(raw_read), rep))
        mover = Mover()
        row("disk read via mover", nbytes, *paired(lambda: mover.get(store, keys, out).result(),
                                                   lambda: store.get(keys, out), rep))
        mover.close()
        store.close()
        os.close(raw_fd)

        server, url = (None, args.redis) if args.redis else start_redis(folder)
        try:
            remote = RedisStore(url, pb)
            raw_client = remote.client
            names = [b"raw:" + k.digest for k in keys]
            blobs = [memoryview(arr[i]) for i in range(n)]

            def raw_pipeline(cmds: Callable[[redis.client.Pipeline], object]) -> Callable[[], list]:
                def run() -> list:
                    with raw_client.pipeline(transaction=False) as p:
                        cmds(p)
                        return p.execute()
                return run

            raw_set = raw_pipeline(lambda p: [p.set(k, b) for k, b in zip(names, blobs, strict=True)])
            row("redis set", nbytes, *paired(lambda: remote.put(keys, pages), raw_set, rep))
            raw_get = raw_pipeline(lambda p: [p.get(k) for k in names])
            row("redis get", nbytes, *paired(lambda: remote.get(keys, out), raw_get, rep))
            assert remote.get(keys, out).all() and torch.equal(out, pages)
            remote.client.flushdb()
            remote.close()
        finally:
            if server is not None:
                server.kill()
                server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
