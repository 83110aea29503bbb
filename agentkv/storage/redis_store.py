"""Shared remote tier on a real Redis server: pipelined batched SET/GET of self-verifying records.

Keys are the block digests (already salted by model, codec and tenant), so several engine processes, on one
machine or several, pointed at one Redis share every prefix any of them computed, and tenants never do. Values
are records (see `record`), kept as a two-field hash (head + identity, page) so that the page goes from the
caller's tensor to the socket without a copy; a load checks checksum and identity, so a collision, a corrupted
or truncated value is a miss. Redis may evict under its own `maxmemory` policy at any time: a key gone is a
miss too. A prefix is only of use from its head, so lookups use TOUCH (which refreshes a key's LRU clock, as
EXISTS does not) and the engine touches the Redis copies of every prefix it serves: under `allkeys-lru`, Redis
then drops chain tails before the heads every request shares. A key holding another type (written by
something else) is replaced on the next put.

Redis must never stop the engine: connection and operation timeouts bound every call, and any failure marks
the tier down (one warning), after which calls return at once (puts skipped, gets and contains all misses)
until a retry time that backs off exponentially; the first call after it that succeeds brings the tier back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import redis
import torch
from redis.backoff import NoBackoff
from redis.connection import Encoder, PythonRespSerializer
from redis.retry import Retry

from agentkv.storage.base import BlockKey, TierStore
from agentkv.storage.record import HEAD_BYTES, encode_head, host_rows, verify

log = logging.getLogger(__name__)


class RedisStore(TierStore):
    name = "redis"
    may_lose = True
    remote = True

    def __init__(self, url: str, page_bytes: int, prefix: bytes = b"akv:", connect_timeout_s: float = 0.5,
                 op_timeout_s: float = 5.0, backoff_s: tuple[float, float] = (0.5, 5.0),
                 batch_bytes: int = 128 << 20) -> None:
        """backoff_s: (first, longest) wait before retrying a tier that failed (a retry is one connect on the
        mover's thread: a short longest wait costs little, and a resumed Redis is back within it).
        batch_bytes: values per pipeline round trip (bounds the client's buffers)."""
        self.url = url
        self.page_bytes = page_bytes
        self.prefix = prefix
        self.batch = max(1, batch_bytes // (page_bytes + HEAD_BYTES))
        self.backoff_s = backoff_s
        # redis-py's pure-Python packer sends a memoryview argument as is (hiredis's would copy it)
        packer = PythonRespSerializer(6000, Encoder("utf-8", "strict", False).encode)
        self.client = redis.Redis.from_url(url, socket_connect_timeout=connect_timeout_s, socket_timeout=op_timeout_s,
                                           retry=Retry(NoBackoff(), 0), command_packer=packer,
                                           socket_read_size=1 << 20)
        self._retry_at = 0.0
        self._wait = 0.0  # current backoff; 0 while the tier is up

    @property
    def up(self) -> bool:
        return self._wait == 0.0

    # ---- TierStore -----------------------------------------------------------------------------------------
    def put(self, keys: Sequence[BlockKey], pages: torch.Tensor) -> None:
        rows = host_rows(pages)
        for lo, hi in self._chunks(len(keys)):
            def build(pipe, lo=lo, hi=hi):
                for key, row in zip(keys[lo:hi], rows[lo:hi], strict=True):
                    pipe.hset(self.prefix + key.digest, mapping={b"h": encode_head(key, row), b"p": memoryview(row)})
            results = self._pipeline(build)
            if results is None:
                return
            wrong = [i for i, r in enumerate(results, start=lo) if isinstance(r, redis.ResponseError)
                     and str(r).startswith("WRONGTYPE")]
            if wrong:  # a key of another type under our name: replace it
                def replace(pipe, wrong=wrong):
                    for i in wrong:
                        pipe.unlink(self.prefix + keys[i].digest)
                        pipe.hset(self.prefix + keys[i].digest, mapping={b"h": encode_head(keys[i], rows[i]),
                                                                         b"p": memoryview(rows[i])})
                results = self._pipeline(replace) or []
            for r in results:
                if isinstance(r, Exception):  # e.g. OOM under maxmemory with noeviction: the block is not stored
                    log.warning("redis tier %s: SET refused: %s", self.url, r)
                    break

    def get(self, keys: Sequence[BlockKey], out: torch.Tensor) -> np.ndarray:
        host = out if out.device.type == "cpu" else torch.empty(out.shape, dtype=torch.uint8)
        rows = host.numpy()
        found = np.zeros(len(keys), dtype=bool)
        for lo, hi in self._chunks(len(keys)):
            values = self._pipeline(lambda pipe, lo=lo, hi=hi: [pipe.hmget(self.prefix + k.digest, (b"h", b"p"))
                                                                for k in keys[lo:hi]])
            if values is None:
                break
            for i, value in enumerate(values, start=lo):
                if isinstance(value, list) and value[0] is not None and value[1] is not None:
                    found[i] = self._load(keys[i], *value, rows[i])
        if host is not out:
            out.copy_(host)
        return found

    def drop(self, keys: Sequence[BlockKey]) -> None:
        for lo, hi in self._chunks(len(keys)):
            if self._pipeline(lambda pipe, lo=lo, hi=hi: pipe.unlink(*(self.prefix + k.digest for k in keys[lo:hi]))) is None:
                return

    def contains(self, keys: Sequence[BlockKey]) -> np.ndarray:
        found = np.zeros(len(keys), dtype=bool)
        for lo, hi in self._chunks(len(keys)):
            res = self._pipeline(lambda pipe, lo=lo, hi=hi: [pipe.touch(self.prefix + k.digest) for k in keys[lo:hi]])
            if res is None:
                break
            found[lo:hi] = [r == 1 for r in res]
        return found

    def touch(self, keys: Sequence[BlockKey]) -> None:
        self.contains(keys)

    def close(self) -> None:
        self.client.close()

    # ---- plumbing ------------------------------------------------------------------------------------------
    def _chunks(self, n: int) -> Iterator[tuple[int, int]]:
        for lo in range(0, n, self.batch):
            yield lo, min(n, lo + self.batch)

    def _load(self, key: BlockKey, head: bytes, page: bytes, row: np.ndarray) -> bool:
        if len(page) != self.page_bytes or not verify(key, head, page):
            log.warning("redis tier %s: value for %s failed verification (%d page bytes); a miss, will recompute",
                        self.url, key.digest.hex(), len(page))
            return False
        row[:] = np.frombuffer(page, dtype=np.uint8)
        return True

    def _pipeline(self, build: Callable[[redis.client.Pipeline], object]) -> list | None:
        """Run one non-transactional pipeline; None (and the tier marked down) when Redis cannot be reached,
        or at once while it is marked down. Per-command errors come back as exception objects."""
        if self._wait and time.monotonic() < self._retry_at:
            return None
        try:
            with self.client.pipeline(transaction=False) as pipe:
                build(pipe)
                results = pipe.execute(raise_on_error=False)
        except (redis.RedisError, OSError) as e:
            self._wait = min(self.backoff_s[1], max(self.backoff_s[0], 2 * self._wait))
            self._retry_at = time.monotonic() + self._wait
            log.warning("redis tier %s unreachable (%s): bypassed, retrying in %.1fs", self.url, e, self._wait)
            return None
        if self._wait:
            log.warning("redis tier %s is back", self.url)
            self._wait = 0.0
        return results
