"""The self-describing record a page is stored as outside the process (a disk slot, a Redis value).

    magic "AKV1" | digest (16) | identity length (u32) | page length (u32) | xxh3-64 checksum (u64) | identity | page

The checksum covers digest, identity and page, so a flipped bit or a torn write anywhere fails it; the identity
(parent digest + tokens) is compared with the one asked for, so a digest collision is a miss too. xxh3 runs at
tens of GB/s, far above any tier's bandwidth, so verifying every load costs next to nothing.
"""

from __future__ import annotations

import struct

import numpy as np
import torch
import xxhash

from agentkv.storage.base import BlockKey

MAGIC = b"AKV1"
_HEAD = struct.Struct("<4s16sIIQ")
HEAD_BYTES = _HEAD.size


def checksum(digest: bytes, identity: bytes, page: memoryview | np.ndarray) -> int:
    h = xxhash.xxh3_64(digest)
    h.update(identity)
    h.update(page)
    return h.intdigest()


def encode_head(key: BlockKey, page: np.ndarray) -> bytes:
    """Head and identity of the record holding `page` (1-D uint8) under `key`; the page follows them."""
    crc = checksum(key.digest, key.identity, page)
    return _HEAD.pack(MAGIC, key.digest, len(key.identity), len(page), crc) + key.identity


def read_head(buf: bytes | memoryview) -> tuple[bytes, int, int, int] | None:
    """(digest, identity length, page length, checksum), or None when `buf` is not a record's head."""
    if len(buf) < HEAD_BYTES:
        return None
    magic, digest, ident_len, page_len, crc = _HEAD.unpack_from(buf)
    return (digest, ident_len, page_len, crc) if magic == MAGIC else None


def verify(key: BlockKey, head: bytes | memoryview, page: memoryview | np.ndarray) -> bool:
    """Does the record (head + identity in `head`, page bytes in `page`) hold exactly `key`'s block?"""
    parsed = read_head(head)
    if parsed is None:
        return False
    digest, ident_len, page_len, crc = parsed
    identity = bytes(head[HEAD_BYTES : HEAD_BYTES + ident_len])
    return (digest == key.digest and identity == key.identity and page_len == len(page)
            and checksum(digest, identity, page) == crc)


def host_rows(pages: torch.Tensor) -> np.ndarray:
    """A CPU uint8 [n, page_bytes] view of `pages` (copied off an accelerator), for I/O and checksums."""
    if pages.dtype != torch.uint8 or pages.dim() != 2:
        raise ValueError(f"pages must be a uint8 tensor [n, page_bytes], got {pages.dtype} {tuple(pages.shape)}")
    return pages.detach().cpu().contiguous().numpy()
