"""The mover: background puts, urgent gets that overtake queued offloads, read-your-writes from the put's
snapshot, and failures that come back as misses instead of exceptions."""

from __future__ import annotations

import threading

import numpy as np
import torch

from agentkv.storage.disk import DiskStore
from agentkv.storage.mover import Mover
from agentkv.storage.redis_store import RedisStore
from tests.storage.conftest import PAGE, make_blocks


class GatedDisk(DiskStore):
    """A real disk store whose puts wait for a gate: the test decides when the backlog drains."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.entered = threading.Event()  # a put is running (and waiting for the gate)
        self.order: list[str] = []

    def put(self, keys, pages):
        self.entered.set()
        self.gate.wait(10)
        self.order.append("put")
        super().put(keys, pages)

    def get(self, keys, out):
        self.order.append("get")
        return super().get(keys, out)


def test_round_trip_through_disk_and_redis(tmp_path, redis_server):
    keys, pages = make_blocks(16)
    disk, remote = DiskStore(tmp_path, 1 << 20, PAGE), RedisStore(redis_server.url, PAGE)
    mover = Mover()
    puts = [mover.put(disk, keys, pages), mover.put(remote, keys, pages)]
    for f in puts:
        assert f.result(10) is None
    outs = [torch.zeros_like(pages), torch.zeros_like(pages)]
    masks = [mover.get(s, keys, o).result(10) for s, o in zip((disk, remote), outs, strict=True)]
    assert all(m.all() for m in masks) and all(torch.equal(o, pages) for o in outs)
    mover.drop(disk, keys[:4]).result(10)
    assert disk.contains(keys).sum() == 12
    mover.close()


def test_get_overtakes_backlog_and_reads_snapshot(tmp_path):
    keys, pages = make_blocks(8)
    store = GatedDisk(tmp_path, 1 << 20, PAGE)
    mover = Mover()
    original = pages.clone()
    first = mover.put(store, keys[:4], pages[:4])
    assert store.entered.wait(10)  # the first put runs; the second waits in the queue
    second = mover.put(store, keys[4:], pages[4:])
    pages.zero_()  # the engine reuses its pages at once: the puts hold snapshots
    out = torch.zeros(8, PAGE, dtype=torch.uint8)
    got = mover.get(store, keys, out)
    store.gate.set()
    found = got.result(10)
    assert found.all() and torch.equal(out, original)  # all 8 served while their puts were queued or running
    first.result(10), second.result(10)
    assert store.order == ["put", "get", "put"]  # the get overtook the queued put
    out.zero_()
    assert mover.get(store, keys, out).result(10).all() and torch.equal(out, original)
    mover.close()


def test_mixed_staged_and_stored_rows(tmp_path):
    keys, pages = make_blocks(7)
    store = GatedDisk(tmp_path, 1 << 20, PAGE)
    store.gate.set()
    mover = Mover()
    mover.put(store, keys[:6:2], pages[:6:2]).result(10)  # rows 0, 2, 4 on disk
    store.gate.clear()
    store.entered.clear()
    mover.put(store, keys[6:], pages[6:])  # holds the worker
    assert store.entered.wait(10)
    mover.put(store, keys[1:6:2], pages[1:6:2])  # rows 1, 3, 5 only staged: queued behind
    out = torch.zeros_like(pages[:6])
    got = mover.get(store, keys[:6], out)
    store.gate.set()
    assert got.result(10).all() and torch.equal(out, pages[:6])
    assert store.order[-3:] == ["put", "get", "put"]
    mover.close()


class BrokenStore(DiskStore):
    def put(self, keys, pages):
        raise OSError("device gone")

    def get(self, keys, out):
        raise OSError("device gone")


def test_failures_are_misses_not_exceptions(tmp_path):
    keys, pages = make_blocks(3)
    store = BrokenStore(tmp_path, 1 << 20, PAGE)
    mover = Mover()
    assert mover.put(store, keys, pages).result(10) is None
    found = mover.get(store, keys, torch.zeros_like(pages)).result(10)
    assert isinstance(found, np.ndarray) and not found.any()
    mover.close()


def test_close_drains_queue(tmp_path):
    keys, pages = make_blocks(32)
    store = DiskStore(tmp_path, 1 << 20, PAGE)
    mover = Mover()
    futures = [mover.put(store, keys[i : i + 1], pages[i : i + 1]) for i in range(32)]
    mover.close()
    assert all(f.done() for f in futures) and store.contains(keys).all()
