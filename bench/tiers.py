"""KV tiers: bandwidth of each path against the raw path for the same bytes, and the time to resume a long
session from each tier against recomputing its prefill, all measured in the same run.

Bandwidth (pages are Llama-3.1-8B's bf16 16-token block by default: 32 layers x K,V x 8 heads x 128 x 2 bytes
x 16 = 2 MiB):
- DRAM: the host slab's put / get against one plain tensor copy of the same bytes (device ↔ host on GPU).
- disk write / read: `DiskStore.put` / `.get` (records with xxh3 checksums, verified on load) against plain
  `pwrite` / `preadv` of the same pages to one file; reads from the page cache and cold (the files' cached
  pages dropped with posix_fadvise first).
- Redis set / get: `RedisStore.put` / `.get` (records, verified, copied into the caller's tensor) against a raw
  redis-py pipeline of SET / GET of the same page bytes (memoryviews of the tensor's rows) over the same client
  settings, on a redis-server this run starts (or `--redis URL`).
- the mover: a disk read through `Mover.get` (worker thread, future) against the store called directly.
Ours and raw run alternately, best of `--repeat` each, so a noisy neighbour hits both alike.

Resume: a Llama-shaped model with random weights (small on CPU, `--shape` on GPU) serves a `--prefix`-token
session; a same-length request evicts it from the GPU tier into the tier under test; then the session's next
turn (prefix + 16 new tokens, one output token) is timed: served from GPU, DRAM, disk (page cache dropped),
Redis, and with no cache at all (its whole prefill recomputed).
Run: .venv/bin/python -m bench.tiers [--pages 48] [--page-bytes 2097152] [--prefix 2048] [--redis URL] [--threads 1]
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
from agentkv.storage.host import HostSlab
from agentkv.storage.mover import Mover
from agentkv.storage.redis_store import RedisStore
from bench._common import best_of, machine

SMALL = dict(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=2, max_position_embeddings=32768)


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


def bandwidth(args: argparse.Namespace, folder: Path, url: str, device: torch.device) -> None:
    n, pb, rep = args.pages, args.page_bytes, args.repeat
    nbytes = n * pb
    keys = chain_keys(np.arange(16 * n), 16, namespace_digest("bench|bf16|tenant"))
    pages = torch.randint(0, 256, (n, pb), dtype=torch.uint8)
    out = torch.empty_like(pages)
    arr, out_arr = pages.numpy(), out.numpy()
    print(f"{n} pages x {pb / 2**20:g} MiB = {nbytes / 2**20:g} MiB per batch, best of {rep}")
    print(f"{'path':<26} {'ours GB/s':>9} {'raw GB/s':>9} {'of raw':>8}")

    on_device = pages.to(device)
    back = torch.empty_like(on_device)
    slab = HostSlab(n, pb, pin=device.type == "cuda")
    raw_slab = torch.empty(n, pb, dtype=torch.uint8, pin_memory=device.type == "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def raw_put() -> None:
        raw_slab.copy_(on_device)

    def raw_get() -> None:
        back.copy_(raw_slab, non_blocking=True)
        sync()

    def slab_get() -> None:
        slab.get(keys, back)
        sync()

    row(f"dram put ({device.type} → slab)", nbytes, *paired(lambda: slab.put(keys, on_device), raw_put, rep))
    row(f"dram get (slab → {device.type})", nbytes, *paired(slab_get, raw_get, rep))
    assert slab.get(keys, back).all() and torch.equal(back.cpu(), pages)

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

    def cold(fn: Callable[[], object]) -> Callable[[], object]:
        def run() -> object:
            drop_cache(folder / "store")
            drop_cache(folder / "raw")
            return fn()
        return run

    row("disk write (page cache)", nbytes, *paired(disk_write, raw_write, rep))
    row("disk read (page cache)", nbytes, *paired(lambda: store.get(keys, out), raw_read, rep))
    assert store.get(keys, out).all() and torch.equal(out, pages)
    row("disk read (cold)", nbytes, *paired(cold(lambda: store.get(keys, out)), cold(raw_read), rep))
    mover = Mover()
    row("disk read via mover", nbytes, *paired(lambda: mover.get(store, keys, out).result(),
                                               lambda: store.get(keys, out), rep))
    mover.close()
    store.close()
    os.close(raw_fd)

    remote = RedisStore(url, pb)
    names = [b"raw:" + k.digest for k in keys]
    blobs = [memoryview(arr[i]) for i in range(n)]

    def raw_pipeline(cmds: Callable[[redis.client.Pipeline], object]) -> Callable[[], list]:
        def run() -> list:
            with remote.client.pipeline(transaction=False) as p:
                cmds(p)
                return p.execute()
        return run

    raw_set = raw_pipeline(lambda p: [p.set(k, b) for k, b in zip(names, blobs, strict=True)])
    row("redis set", nbytes, *paired(lambda: remote.put(keys, pages), raw_set, rep))
    raw_get_redis = raw_pipeline(lambda p: [p.get(k) for k in names])
    row("redis get", nbytes, *paired(lambda: remote.get(keys, out), raw_get_redis, rep))
    assert remote.get(keys, out).all() and torch.equal(out, pages)
    remote.client.flushdb()
    remote.close()


def build_model(shape: str, device: torch.device):
    from agentkv.catalog import model as catalog_model
    from agentkv.codecs import get_codec
    from agentkv.kernels.backends import make_backend
    from agentkv.model.config import ModelConfig
    from agentkv.model.llama import LlamaForCausalLM

    if shape == "small":
        raw = dict(SMALL)
    else:
        m = catalog_model(shape)
        raw = dict(vocab_size=m.vocab, hidden_size=m.hidden, intermediate_size=m.intermediate,
                   num_hidden_layers=m.layers, num_attention_heads=m.heads, num_key_value_heads=m.kv_heads,
                   head_dim=m.head_dim, max_position_embeddings=m.context)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    codec = get_codec("bf16" if dtype == torch.bfloat16 else "fp32")
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlamaForCausalLM(ModelConfig.from_hf({**raw, "architectures": ["LlamaForCausalLM"]}),
                                 make_backend("auto", device, codec))
    torch.set_default_dtype(default)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return model, codec


def resume(args: argparse.Namespace, folder: Path, url: str, device: torch.device) -> None:
    from agentkv.engine.llm import LLM
    from agentkv.engine.sequence import SamplingParams

    model, codec = build_model(args.shape, device)
    g = torch.Generator().manual_seed(1)
    session, other = (torch.randint(10, 30000, (args.prefix,), generator=g).tolist() for _ in range(2))
    turn = session + torch.randint(10, 30000, (16,), generator=g).tolist()
    one = SamplingParams(max_tokens=1, temperature=0, ignore_eos=True)
    probe = LLM(model, kv_cache_bytes=2**24, kv_codec=codec.name)
    page = probe.layout.page_bytes
    gpu = page * (len(turn) // probe.block_size + 8)  # room for one session: the other request evicts it
    big = str(4 * (len(turn) + 64))  # a tier size in tokens: plenty for both requests
    print(f"\nresume: {args.shape} model ({codec.name} KV, {page / 2**10:g} KiB pages), session of {args.prefix} "
          f"tokens + 16 new, one output token; GPU pool holds one session")
    print(f"{'served from':<14} {'TTFT s':>8} {'vs recompute':>12}  cached tokens per tier")

    def timed(llm: LLM, before: Callable[[], None] = lambda: None) -> tuple[float, dict[str, int]]:
        best, hits = float("inf"), {}
        for _ in range(args.repeat):
            llm.generate([session], one)
            llm.generate([other], one)  # evicts the session into the tier under test
            before()
            t = time.perf_counter()
            out = llm.generate([turn], one)[0]
            if device.type == "cuda":
                torch.cuda.synchronize()
            best, hits = min(best, time.perf_counter() - t), out.cached_tokens_per_tier
        return best, hits

    plain = LLM(model, kv_cache_bytes=gpu, kv_codec=codec.name, enable_prefix_caching=False)
    base, _ = timed(plain)
    print(f"{'recompute':<14} {base:>8.3f} {1:>11.1f}x")
    cases = [("gpu", None, None), ("dram", f"dram={big}", None),
             ("disk (cold)", f"disk={big}@{folder / 'resume'}", folder / "resume"),
             ("redis", f"redis={big}@{url}", None)]
    for name, tiers, cold in cases:
        cache_bytes = gpu if tiers else 4 * gpu
        llm = LLM(model, kv_cache_bytes=cache_bytes, kv_codec=codec.name, kv_tiers=tiers)
        t, hits = timed(llm, (lambda c=cold: drop_cache(c)) if cold else (lambda: None))
        print(f"{name:<14} {t:>8.3f} {base / t:>11.1f}x  {hits}")
        llm.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pages", type=int, default=48)
    ap.add_argument("--page-bytes", type=int, default=2 << 20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--prefix", type=int, default=2048, help="session tokens to resume (default 2048)")
    ap.add_argument("--shape", default="small", help="small, or a models.toml name (e.g. llama-3.1-8b) on GPU")
    ap.add_argument("--redis", help="an existing server's URL (default: start redis-server here)")
    ap.add_argument("--dir", help="folder for the disk files (default: a temp folder)")
    ap.add_argument("--skip", choices=["bandwidth", "resume"], help="leave one part out")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (1 on a shared, loaded CPU box)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {machine()}; device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        server, url = (None, args.redis) if args.redis else start_redis(folder)
        try:
            if args.skip != "bandwidth":
                bandwidth(args, folder, url, device)
            if args.skip != "resume":
                resume(args, folder, url, device)
        finally:
            if server is not None:
                server.kill()
                server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
