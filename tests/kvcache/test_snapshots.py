"""The policy's snapshot rule for linear-attention state (torch-free): which block boundaries keep a state."""

from __future__ import annotations

from agentkv.kvcache.policies import make_policy
from agentkv.kvcache.snapshots import Snapshot, snapshot_points


def test_a_prompt_keeps_every_nth_boundary_and_the_one_a_repeat_hits():
    # a 67-token prompt in blocks of 8, in two chunks: boundaries 2, 4, 6 (every 2nd) and 8 ((67 - 1) // 8)
    first = snapshot_points(0, 30, 67, 8, every=2)
    rest = snapshot_points(30, 67, 67, 8, every=2)
    assert first == [Snapshot(2)] and rest == [Snapshot(4), Snapshot(6), Snapshot(8)]
    assert snapshot_points(0, 67, 67, 8, every=0) == [Snapshot(8)]


def test_a_reply_keeps_only_its_latest_boundary():
    # decode steps past a 20-token prompt: the step that completes block 3 keeps it as the reply's latest
    assert snapshot_points(23, 24, 20, 8, every=0) == [Snapshot(3, latest=True)]
    assert snapshot_points(24, 25, 20, 8, every=0) == []
    assert snapshot_points(31, 32, 20, 8, every=4) == [Snapshot(4)]  # a periodic one is kept for good
    # a re-admitted sequence recomputing prompt and reply at once: the prompt's boundary, then the reply's last
    assert snapshot_points(0, 40, 20, 8, every=0) == [Snapshot(2), Snapshot(5, latest=True)]


def test_every_policy_answers_through_the_same_hook():
    for name in ("lru", "lfu", "agent"):
        policy = make_policy(name, block_size=8)
        policy.snapshot_every = 3
        assert policy.snapshots(0, 50, 50, 8) == [Snapshot(3), Snapshot(6)]
