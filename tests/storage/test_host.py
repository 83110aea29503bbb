"""The host DRAM slab: round trip, drops reuse rows, and a forced digest collision is a miss, never the other
block's page."""

from __future__ import annotations

import torch

from agentkv.storage import BlockKey
from agentkv.storage.host import HostSlab
from tests.storage.conftest import PAGE, make_blocks


def test_round_trip_and_reuse():
    keys, pages = make_blocks(6)
    slab = HostSlab(4, PAGE, pin=False)
    slab.put(keys[:4], pages[:4])
    out = torch.zeros(6, PAGE, dtype=torch.uint8)
    assert slab.get(keys, out).tolist() == [True] * 4 + [False] * 2
    assert torch.equal(out[:4], pages[:4])
    slab.drop(keys[:2])
    slab.put(keys[4:], pages[4:])
    assert slab.get(keys[2:], out[2:]).all() and torch.equal(out[2:], pages[2:])


def test_forced_collision_is_a_miss():
    keys, pages = make_blocks(2)
    slab = HostSlab(4, PAGE, pin=False)
    slab.put(keys[:1], pages[:1])
    impostor = BlockKey(keys[0].digest, keys[1].identity)
    slab.put([impostor], pages[1:])  # does not overwrite the other block's page
    out = torch.zeros(1, PAGE, dtype=torch.uint8)
    assert not slab.get([impostor], out)[0]
    assert slab.get(keys[:1], out)[0] and torch.equal(out, pages[:1])
