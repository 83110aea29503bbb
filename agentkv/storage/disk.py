"""Local-disk tier: fixed-size slots in segment files under a byte cap, each slot one verified record.

Every page of a store has the same size, so the disk is laid out like the DRAM slab: slot s lives in segment
file s // slots_per_segment at a 4 KiB-aligned offset, and a block is written and read with one vectored
syscall (head + identity + page), the page going straight between the file and the caller's tensor row.

Crash safety comes from verification rather than ordering: a slot is entered in the index only after its write
returns, and every load checks the record against the key it was asked for. A torn write, a slot reused after
the last index save, a flipped bit or a truncated file all read as a miss (the slot is then freed), never as
another block's bytes. The index is saved at `close` (temp file, fsync, rename) with each segment file's size
and modification time; at open it is used only if it is readable and the segments are exactly as it saw them.
Otherwise (a kill, an exit without `close`, a damaged or stale index) the index is rebuilt by scanning slot
heads, so every block whose write completed survives. One engine at a time: the folder is locked (`flock`)
while a store has it open, and a second store gets `FolderInUse`.

Disk full (ENOSPC, EDQUOT, EFBIG) shrinks the store to the slots its files already span; `capacity_pages`
tells the engine the new size.

The pool's pages on disk are placed and evicted by the policy core (the store is never asked to hold more than
its capacity). A store of pages the core does not count (a sliding model's window pages, engine/tiering.py)
is opened with `evicts`: once full, a put takes the slot of the least recently written or read block.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from agentkv.storage.base import BlockKey, TierStore
from agentkv.storage.record import HEAD_BYTES, encode_head, host_rows, read_head, verify

log = logging.getLogger(__name__)

ALIGN = 4096
SEGMENT_BYTES = 1 << 30
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _round_up(n: int, to: int) -> int:
    return -(-n // to) * to


class FolderInUse(RuntimeError):
    """Another store (this process or another) has the disk tier's folder open."""


class DiskStore(TierStore):
    name = "disk"
    may_lose = True

    def __init__(self, path: str | os.PathLike, capacity_bytes: float, page_bytes: int,
                 max_identity_bytes: int = 16 + 4 * 256, evicts: bool = False) -> None:
        """max_identity_bytes: room for a key's identity (parent digest + int32 tokens: 256-token blocks by
        default). evicts: a full store makes room by evicting its least recently used block (else it skips)."""
        self.root = Path(path)
        self.page_bytes = page_bytes
        self.head_room = _round_up(HEAD_BYTES + max_identity_bytes, 64)
        self.slot_bytes = _round_up(self.head_room + page_bytes, ALIGN)
        self.n_slots = int(capacity_bytes // self.slot_bytes)
        if self.n_slots < 1:
            raise ValueError(f"disk tier at {self.root}: {capacity_bytes:.0f} bytes hold no {self.slot_bytes}-byte slot")
        self.per_segment = max(1, SEGMENT_BYTES // self.slot_bytes)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock_folder()
        self._fds: dict[int, int] = {}
        self.failure: str | None = None  # what the disk last failed with, while it fails
        self._lock = threading.Lock()  # guards index and free list: `contains` may run on another thread
        self.evicts = evicts
        self.evicted = 0  # blocks evicted to make room (with `evicts`)
        self.index: dict[bytes, int] = {}  # digest -> slot, least recently used first
        self.index = self._load_index() or self._scan()
        used = set(self.index.values())
        self.free = [s for s in range(self.n_slots - 1, -1, -1) if s not in used]

    @property
    def capacity_pages(self) -> int:
        return self.n_slots

    # ---- TierStore -----------------------------------------------------------------------------------------
    def put(self, keys: Sequence[BlockKey], pages: torch.Tensor) -> None:
        rows = host_rows(pages)
        for key, row in zip(keys, rows, strict=True):
            with self._lock:
                if key.digest in self.index:  # content-addressed: already stored
                    self._used(key.digest)
                    continue
                slot = self._free_slot()
                if slot is None:
                    continue  # full (the core's accounts prevent that where it places the pages)
            try:
                written = self._write(slot, encode_head(key, row), row)
            except OSError as e:  # a failing disk (EIO, a read-only remount): the slot goes back, the put is a skip
                self._failing(e)
                with self._lock:
                    self.free.append(slot)
                continue
            self._failing(None)
            if written:
                with self._lock:
                    self.index[key.digest] = slot

    def get(self, keys: Sequence[BlockKey], out: torch.Tensor) -> np.ndarray:
        host = out if out.device.type == "cpu" else torch.empty(out.shape, dtype=torch.uint8)
        rows = host.numpy()
        found = np.zeros(len(keys), dtype=bool)
        with self._lock:
            slots = [self.index.get(k.digest, -1) for k in keys]
            for k in keys:
                self._used(k.digest)
        head = bytearray(self.head_room)
        for i in sorted(range(len(keys)), key=slots.__getitem__):  # in file order
            if slots[i] < 0:
                continue
            n = self._read(slots[i], head, rows[i])
            found[i] = n == self.head_room + self.page_bytes and verify(keys[i], head, rows[i])
            if not found[i]:
                log.warning("disk tier %s: slot %d failed verification (%d bytes read); dropped, will recompute",
                            self.root, slots[i], n)
                self.drop([keys[i]])
        if host is not out:
            out.copy_(host)
        return found

    def _used(self, digest: bytes) -> None:
        """`digest` becomes the most recently used (the order `evicts` takes victims in); lock held."""
        if self.evicts and digest in self.index:
            self.index[digest] = self.index.pop(digest)

    def _free_slot(self) -> int | None:
        """A slot to write: a free one, or with `evicts` the least recently used block's; lock held."""
        if self.free:
            return self.free.pop()
        if not self.evicts or not self.index:
            return None
        self.evicted += 1
        return self.index.pop(next(iter(self.index)))

    def drop(self, keys: Sequence[BlockKey]) -> None:
        with self._lock:
            for k in keys:
                slot = self.index.pop(k.digest, None)
                if slot is not None:
                    self.free.append(slot)

    def contains(self, keys: Sequence[BlockKey]) -> np.ndarray:
        with self._lock:
            return np.array([k.digest in self.index for k in keys], dtype=bool)

    def close(self) -> None:
        """Save the index and release the files and the folder's lock (a deleted folder only warns)."""
        if self._lock_fd is None:
            return
        self.save_index()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        os.close(self._lock_fd)
        self._lock_fd = None

    def _lock_folder(self) -> int:
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FolderInUse(f"disk tier {self.root} is in use by another engine (pid {holder}); give each "
                              "engine its own folder") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except OSError:  # a full disk: the caller serves without this tier
            os.close(fd)
            raise
        return fd

    # ---- slots ---------------------------------------------------------------------------------------------
    def _fd(self, slot: int) -> tuple[int, int]:
        seg, pos = divmod(slot, self.per_segment)
        if seg not in self._fds:
            self._fds[seg] = os.open(self.root / f"seg{seg:05d}.kv", os.O_RDWR | os.O_CREAT, 0o644)
        return self._fds[seg], pos * self.slot_bytes

    def _write(self, slot: int, head: bytes, row: np.ndarray) -> bool:
        fd, offset = self._fd(slot)
        pad = bytes(self.head_room - len(head))
        try:
            n = os.pwritev(fd, [head, pad, row], offset)
            if n == self.head_room + self.page_bytes:
                return True
            err = OSError(errno.ENOSPC, "short write")
        except OSError as e:
            err = e
        if err.errno not in _FULL:
            raise err
        extent = {seg: os.fstat(f).st_size for seg, f in self._fds.items()}
        with self._lock:  # keep the slots the files already span (room the disk gave); lose the rest
            self.free = [s for s in self.free
                         if (s % self.per_segment + 1) * self.slot_bytes <= extent.get(s // self.per_segment, 0)]
            self.n_slots = len(self.index) + len(self.free)
        log.warning("disk tier %s is full (%s): shrunk to %d pages", self.root, err.strerror, self.n_slots)
        return False

    def _read(self, slot: int, head: bytearray, row: np.ndarray) -> int:
        try:
            fd, offset = self._fd(slot)
            n = os.preadv(fd, [head, row], offset)
        except OSError as e:
            self._failing(e)
            return -1
        self._failing(None)
        return n

    def _failing(self, error: OSError | None) -> None:
        """Say once that the disk fails (and once that it works again), not once per page of every batch."""
        if (error is None) == (self.failure is None):
            return
        self.failure = None if error is None else error.strerror or str(error)
        if error is None:
            log.warning("disk tier %s works again", self.root)
        else:
            log.warning("disk tier %s fails (%s): its writes are skipped and its reads miss until it works again",
                        self.root, self.failure)

    # ---- the index -----------------------------------------------------------------------------------------
    def _geometry(self) -> dict:
        return {"version": 1, "page_bytes": self.page_bytes, "slot_bytes": self.slot_bytes,
                "head_room": self.head_room, "per_segment": self.per_segment}

    def _segments(self) -> list[list[int]]:
        """[segment, size, mtime_ns] of every segment file: what the index saw, to tell a stale one."""
        out = []
        for path in sorted(self.root.glob("seg*.kv")):
            st = path.stat()
            out.append([int(path.stem[3:]), st.st_size, st.st_mtime_ns])
        return out

    def save_index(self) -> None:
        """Atomically replace the saved index (temp file, fsync, rename); a failure (disk full, folder gone)
        only warns: the next open rescans."""
        with self._lock:
            digests = np.frombuffer(b"".join(self.index), dtype=np.uint8).reshape(-1, 16)
            slots = np.fromiter(self.index.values(), dtype=np.int64, count=len(self.index))
        tmp = self.root / "index.tmp"
        try:
            for fd in self._fds.values():
                os.fsync(fd)  # the segments as the index describes them are on disk before it is
            meta = {**self._geometry(), "segments": self._segments()}
            with open(tmp, "wb") as f:
                np.savez(f, geometry=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                         digests=digests, slots=slots)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.root / "index.npz")
        except OSError as e:
            log.warning("disk tier %s: index not saved (%s); the next start rescans the slots", self.root,
                        e.strerror or e)
            tmp.unlink(missing_ok=True)

    def _load_index(self) -> dict[bytes, int] | None:
        """The saved index if it is readable and describes the segments as they are; else None (rescan)."""
        path = self.root / "index.npz"
        if not path.exists():
            return None
        try:
            with np.load(path) as z:
                meta = json.loads(z["geometry"].tobytes())
                digests, slots = z["digests"], z["slots"]
            segments = meta.pop("segments")
            if meta != self._geometry():
                log.warning("disk tier %s: saved with another page layout; starting empty", self.root)
                return {}
            if segments != self._segments():
                log.warning("disk tier %s: index older than the slots (no clean close); rescanning", self.root)
                return None
            if digests.shape != (len(slots), 16):
                raise ValueError(f"{len(digests)} digests for {len(slots)} slots")
            return {d.tobytes(): int(s) for d, s in zip(digests, slots, strict=True) if 0 <= s < self.n_slots}
        except Exception as e:  # a damaged file fails in many ways (BadZipFile, EOFError, KeyError, ...)
            log.warning("disk tier %s: index unreadable (%s: %s); rescanning slots", self.root, type(e).__name__, e)
            return None

    def _scan(self) -> dict[bytes, int]:
        """Rebuild the index from the slot heads on disk (verification happens at load time)."""
        index: dict[bytes, int] = {}
        head = bytearray(HEAD_BYTES)
        for seg_path in sorted(self.root.glob("seg*.kv")):
            seg = int(seg_path.stem[3:])
            size = seg_path.stat().st_size
            for pos in range(min(self.per_segment, size // self.slot_bytes + 1)):
                slot = seg * self.per_segment + pos
                if slot >= self.n_slots:
                    break
                fd, offset = self._fd(slot)
                parsed = read_head(head) if os.preadv(fd, [head], offset) == HEAD_BYTES else None
                if parsed and parsed[2] == self.page_bytes:
                    index[parsed[0]] = slot
        return index
