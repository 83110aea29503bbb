"""Disk tier: round trip, a byte cap, restart survival, and corruption, truncation, collision and a full disk
all reading as misses (never as wrong bytes)."""

from __future__ import annotations

import os
import resource
import signal

import numpy as np
import pytest
import torch

from agentkv.storage import BlockKey
from agentkv.storage.disk import DiskStore
from tests.storage.conftest import PAGE, make_blocks


def load(store: DiskStore, keys: list[BlockKey]) -> tuple[np.ndarray, torch.Tensor]:
    out = torch.full((len(keys), PAGE), 7, dtype=torch.uint8)
    return store.get(keys, out), out


def test_round_trip_contains_drop(tmp_path):
    keys, pages = make_blocks(12)
    store = DiskStore(tmp_path, 1 << 20, PAGE)
    store.put(keys[:8], pages[:8])
    assert store.contains(keys).tolist() == [True] * 8 + [False] * 4
    found, out = load(store, keys)
    assert found.tolist() == [True] * 8 + [False] * 4
    assert torch.equal(out[:8], pages[:8])
    store.drop(keys[2:4])
    found, out = load(store, keys[:8])
    assert found.tolist() == [True, True, False, False, True, True, True, True]
    assert torch.equal(out[found], pages[:8][found])
    store.close()


def test_byte_cap_holds(tmp_path):
    keys, pages = make_blocks(20)
    store = DiskStore(tmp_path, 5 * 8192, PAGE)  # a slot is 8 KiB (head room + page, 4 KiB aligned)
    assert store.capacity_pages == 5
    store.put(keys, pages)
    assert store.contains(keys).sum() == 5
    assert sum(f.stat().st_size for f in tmp_path.glob("seg*.kv")) <= 5 * 8192
    store.drop(keys[:2])
    store.put(keys[10:12], pages[10:12])  # dropped slots are reused
    found, out = load(store, keys[10:12])
    assert found.all() and torch.equal(out, pages[10:12])


def test_an_evicting_store_makes_room_from_its_least_recently_used(tmp_path):
    """`evicts` (window pages, which no policy core places): a full store takes the slot of the block least
    recently written or read; its files stay within the cap and every read is the block asked for."""
    keys, pages = make_blocks(8)
    store = DiskStore(tmp_path, 4 * 8192, PAGE, evicts=True)
    store.put(keys[:4], pages[:4])
    load(store, keys[:1])  # block 0 read: now the most recently used
    store.put(keys[4:6], pages[4:6])
    assert store.contains(keys).tolist() == [True, False, False, True, True, True, False, False]
    assert store.evicted == 2
    store.put(keys[3:4], pages[3:4])  # already there: used again, not written twice
    store.put(keys[6:7], pages[6:7])
    assert store.contains(keys).tolist() == [False, False, False, True, True, True, True, False]
    found, out = load(store, keys[3:7])
    assert found.all() and torch.equal(out, pages[3:7])
    assert sum(f.stat().st_size for f in tmp_path.glob("seg*.kv")) <= 4 * 8192
    store.close()


@pytest.mark.parametrize("lose_index", [False, True])
def test_survives_reopen(tmp_path, lose_index):
    keys, pages = make_blocks(10)
    store = DiskStore(tmp_path, 1 << 20, PAGE)
    store.put(keys, pages)
    store.drop(keys[:1])
    store.close()
    if lose_index:  # a crash before the index was ever saved: the store rescans slot heads
        (tmp_path / "index.npz").unlink()
    again = DiskStore(tmp_path, 1 << 20, PAGE)
    found, out = load(again, keys)
    assert found[1:].all() and torch.equal(out[1:], pages[1:])
    assert not found[0] or lose_index  # a dropped block may come back from a scan (its bytes are still right)
    assert torch.equal(out[found], pages[found])


def test_other_page_layout_starts_empty(tmp_path):
    keys, pages = make_blocks(3)
    store = DiskStore(tmp_path, 1 << 20, PAGE)
    store.put(keys, pages)
    store.close()
    assert not DiskStore(tmp_path, 1 << 20, PAGE + 4096).contains(keys).any()


def _slot_offset(store: DiskStore, key: BlockKey) -> tuple[str, int]:
    seg, pos = divmod(store.index[key.digest], store.per_segment)
    return str(store.root / f"seg{seg:05d}.kv"), pos * store.slot_bytes


@pytest.mark.parametrize("where", ["page", "head", "identity"])
def test_bit_flip_is_a_miss(tmp_path, where):
    keys, pages = make_blocks(6)
    store = DiskStore(tmp_path, 1 << 20, PAGE)
    store.put(keys, pages)
    path, offset = _slot_offset(store, keys[3])
    offset += {"page": store.head_room + PAGE // 2, "head": 20, "identity": 40}[where]
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))
    found, out = load(store, keys)
    assert found.tolist() == [True, True, True, False, True, True]
    assert torch.equal(out[found], pages[found])
    assert not store.contains(keys[3:4])[0]  # the bad slot is freed


def test_truncated_segment_is_a_miss(tmp_path):
    keys, pages = make_blocks(6)
    store = DiskStore(tmp_path, 1 << 20, PAGE)
    store.put(keys, pages)
    path, offset = _slot_offset(store, keys[5])
    os.truncate(path, offset + store.slot_bytes // 2)
    found, out = load(store, keys)
    assert found.tolist() == [True] * 5 + [False]
    assert torch.equal(out[:5], pages[:5])


def test_forced_collision_is_a_miss(tmp_path):
    keys, pages = make_blocks(2)
    store = DiskStore(tmp_path, 1 << 20, PAGE)
    store.put(keys[:1], pages[:1])
    impostor = BlockKey(keys[0].digest, keys[1].identity)  # same digest, another block's identity
    assert not load(store, [impostor])[0][0]


def test_disk_full_shrinks(tmp_path):
    keys, pages = make_blocks(10)
    store = DiskStore(tmp_path, 1 << 20, PAGE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 * store.slot_bytes + 100, old_limit[1]))  # a file may hold 4 slots
    try:
        store.put(keys, pages)  # the fifth write fails with EFBIG: no exception, the tier shrinks
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert store.capacity_pages == 4
    found, out = load(store, keys)
    assert found.tolist() == [True] * 4 + [False] * 6
    assert torch.equal(out[:4], pages[:4])
    store.drop(keys[:1])
    store.put(keys[4:6], pages[4:6])  # room the disk already gave is reused; nothing past it is tried
    assert store.contains(keys[4:6]).tolist() == [True, False]


def _written_and_closed(tmp_path):
    keys, pages = make_blocks(14)
    store = DiskStore(tmp_path, 1 << 20, PAGE)
    store.put(keys[:10], pages[:10])
    store.close()
    return keys, pages


def _mismatched_counts(path):
    with np.load(path) as z:
        parts = {k: z[k] for k in z.files}
    parts["slots"] = parts["slots"][:-3]
    with open(path, "wb") as f:
        np.savez(f, **parts)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "counts", "stale"])
def test_a_damaged_or_stale_index_is_rebuilt_by_a_rescan(tmp_path, damage, caplog):
    keys, pages = _written_and_closed(tmp_path)
    index = tmp_path / "index.npz"
    if damage == "truncated":
        index.write_bytes(index.read_bytes()[: index.stat().st_size // 2])
    elif damage == "garbage":
        index.write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    elif damage == "empty":
        index.write_bytes(b"")
    elif damage == "counts":
        _mismatched_counts(index)
    else:  # an index saved before the last 4 blocks were written (the process then died without close)
        store = DiskStore(tmp_path, 1 << 20, PAGE)
        saved = index.read_bytes()
        store.put(keys[10:], pages[10:])
        store._fds.clear()  # a kill: no close, nothing saved
        os.close(store._lock_fd)
        index.write_bytes(saved)
    if damage != "stale":
        keys, pages = keys[:10], pages[:10]
    again = DiskStore(tmp_path, 1 << 20, PAGE)
    found, out = load(again, keys)
    assert found.all() and torch.equal(out, pages)
    assert "rescanning" in caplog.text
    again.close()


def test_a_folder_is_locked_by_one_store(tmp_path):
    from agentkv.storage.disk import FolderInUse

    first = DiskStore(tmp_path, 1 << 20, PAGE)
    with pytest.raises(FolderInUse, match=rf"disk tier {tmp_path} is in use by another engine \(pid {os.getpid()}\)"):
        DiskStore(tmp_path, 1 << 20, PAGE)
    first.close()
    DiskStore(tmp_path, 1 << 20, PAGE).close()


def test_close_survives_a_deleted_folder_and_a_full_disk(tmp_path, caplog):
    import shutil

    keys, pages = make_blocks(4)
    gone = DiskStore(tmp_path / "gone", 1 << 20, PAGE)
    gone.put(keys, pages)
    shutil.rmtree(tmp_path / "gone")
    gone.close()  # warns, does not raise
    assert "index not saved" in caplog.text
    full = DiskStore(tmp_path / "full", 1 << 20, PAGE)
    full.put(keys, pages)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (200, old_limit[1]))  # the index cannot be written
    try:
        full.close()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert not (tmp_path / "full" / "index.tmp").exists()
    assert "Traceback" not in caplog.text and all(r.levelname == "WARNING" for r in caplog.records)
    found, _ = load(DiskStore(tmp_path / "full", 1 << 20, PAGE), keys)
    assert found.all()


def test_a_failing_disk_warns_once_leaks_no_slot_and_recovers(tmp_path, caplog):
    """Writes that fail (here: the segment opened read-only, as after a remount) are skips, not exceptions: the
    slot goes back to the free list, one warning says so, and one more when the disk works again."""
    keys, pages = make_blocks(12)
    store = DiskStore(tmp_path, 1 << 20, PAGE)
    store.put(keys[:2], pages[:2])
    free = len(store.free)
    writable = dict(store._fds)
    store._fds = {seg: os.open(tmp_path / f"seg{seg:05d}.kv", os.O_RDONLY) for seg in writable}
    caplog.clear()
    for _ in range(3):
        store.put(keys[2:10], pages[2:10])  # would raise EBADF per page
    assert len(store.free) == free and store.failure is not None
    assert not store.contains(keys[2:10]).any()
    assert len(caplog.records) == 1 and "fails" in caplog.records[0].message  # 24 failed writes, one line
    for fd in store._fds.values():
        os.close(fd)
    store._fds = writable
    store.put(keys[10:], pages[10:])
    assert store.contains(keys[10:]).all() and store.failure is None and "works again" in caplog.records[-1].message
    found, out = load(store, keys[:2])
    assert found.all() and torch.equal(out, pages[:2])
