"""Redis tier against a real redis-server: round trip, sharing across clients, maxmemory eviction, an outage
and a stall (no exception, hits resume), corrupted and truncated values and a forced collision (misses)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
import redis
import torch

from agentkv.storage import BlockKey
from agentkv.storage.redis_store import RedisStore
from tests.storage.conftest import PAGE, make_blocks


def load(store: RedisStore, keys: list[BlockKey]) -> tuple[np.ndarray, torch.Tensor]:
    out = torch.full((len(keys), PAGE), 7, dtype=torch.uint8)
    return store.get(keys, out), out


def test_round_trip_contains_drop(redis_server):
    keys, pages = make_blocks(40)
    store = RedisStore(redis_server.url, PAGE, batch_bytes=8 * PAGE)  # several pipelines per call
    store.put(keys[:30], pages[:30])
    assert store.contains(keys).tolist() == [True] * 30 + [False] * 10
    found, out = load(store, keys)
    assert found.tolist() == [True] * 30 + [False] * 10
    assert torch.equal(out[:30], pages[:30])
    store.drop(keys[:10])
    assert store.contains(keys[:30]).tolist() == [False] * 10 + [True] * 20
    store.close()


def test_shared_between_clients_not_between_tenants(redis_server):
    keys, pages = make_blocks(8, salt="m|bf16|tenant-a")
    other_tenant, _ = make_blocks(8, salt="m|bf16|tenant-b")  # same tokens, another tenant's salt
    RedisStore(redis_server.url, PAGE).put(keys, pages)
    reader = RedisStore(redis_server.url, PAGE)  # a second connection, as another engine process has
    found, out = load(reader, keys)
    assert found.all() and torch.equal(out, pages)
    assert not load(reader, other_tenant)[0].any()


def test_maxmemory_eviction_is_a_miss(small_redis):
    keys, pages = make_blocks(900)  # ~4 MB into a 2 MB server
    store = RedisStore(small_redis.url, PAGE)
    store.put(keys, pages)
    found, out = load(store, keys)
    assert 0 < found.sum() < len(keys)
    assert torch.equal(out[found], pages[found])
    assert store.up


def test_killed_then_restarted(redis_server):
    keys, pages = make_blocks(10)
    store = RedisStore(redis_server.url, PAGE, backoff_s=(0.05, 0.2))
    store.put(keys[:5], pages[:5])
    redis_server.kill()
    t0 = time.monotonic()
    store.put(keys[5:], pages[5:])  # nothing raises while the server is gone
    assert not load(store, keys)[0].any()
    assert not store.contains(keys).any()
    store.drop(keys)
    assert not store.up
    assert time.monotonic() - t0 < 2.0  # refused connections and the bypass answer at once
    redis_server.start()  # an empty server on the same port (no persistence)
    time.sleep(0.25)
    store.put(keys, pages)
    assert store.up
    found, out = load(store, keys)
    assert found.all() and torch.equal(out, pages)


def test_stalled_server_times_out(redis_server):
    keys, pages = make_blocks(4)
    store = RedisStore(redis_server.url, PAGE, op_timeout_s=0.3, backoff_s=(0.05, 0.1))
    store.put(keys, pages)
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        assert not load(store, keys)[0].any()
        assert time.monotonic() - t0 < 1.5
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    time.sleep(0.15)
    found, out = load(store, keys)
    assert found.all() and torch.equal(out, pages)


@pytest.mark.parametrize("damage", ["flip_page", "flip_identity", "truncate", "extend", "lose_field", "garbage_head",
                                    "wrong_type"])
def test_damaged_value_is_a_miss(redis_server, damage):
    keys, pages = make_blocks(5)
    store = RedisStore(redis_server.url, PAGE)
    store.put(keys, pages)
    raw = redis.Redis.from_url(redis_server.url)
    name = store.prefix + keys[2].digest
    head, page = raw.hmget(name, [b"h", b"p"])
    if damage == "flip_page":
        raw.hset(name, b"p", page[:100] + bytes([page[100] ^ 1]) + page[101:])
    elif damage == "flip_identity":
        raw.hset(name, b"h", head[:40] + bytes([head[40] ^ 0x80]) + head[41:])
    elif damage == "truncate":
        raw.hset(name, b"p", page[:-1])
    elif damage == "extend":
        raw.hset(name, b"p", page + b"\0")
    elif damage == "lose_field":
        raw.hdel(name, b"h")
    elif damage == "garbage_head":
        raw.hset(name, b"h", b"not a record")
    else:
        raw.delete(name)
        raw.set(name, head + page)
    found, out = load(store, keys)
    assert found.tolist() == [True, True, False, True, True]
    assert torch.equal(out[found], pages[found])


def test_forced_collision_is_a_miss(redis_server):
    keys, pages = make_blocks(2)
    store = RedisStore(redis_server.url, PAGE)
    store.put(keys[:1], pages[:1])
    assert not load(store, [BlockKey(keys[0].digest, keys[1].identity)])[0][0]


def test_a_key_of_another_type_is_replaced_by_the_next_put(redis_server):
    keys, pages = make_blocks(5)
    store = RedisStore(redis_server.url, PAGE)
    raw = redis.Redis.from_url(redis_server.url)
    raw.set(store.prefix + keys[2].digest, b"written by something else")
    store.put(keys, pages)
    found, out = load(store, keys)
    assert found.all() and torch.equal(out, pages)


def test_a_lookup_refreshes_the_keys_lru_clock(redis_server):
    """Under allkeys-lru Redis evicts the longest idle keys: a lookup must count as a use (TOUCH), or a
    chain's heads, written first, go first and the surviving tails are of no use to anyone."""
    keys, pages = make_blocks(3)
    store = RedisStore(redis_server.url, PAGE)
    store.put(keys, pages)
    raw = redis.Redis.from_url(redis_server.url)
    time.sleep(2.1)  # Redis's LRU clock ticks in seconds
    assert raw.object("idletime", store.prefix + keys[0].digest) >= 2
    assert store.contains(keys[:1]).all()
    assert raw.object("idletime", store.prefix + keys[0].digest) <= 1
    assert raw.object("idletime", store.prefix + keys[2].digest) >= 2
