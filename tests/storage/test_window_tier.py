"""A sliding model's window pages on a real disk tier (`Tiering.window_stores`: a `window` folder beside the
tier's pages): the folder holds at most as many pages as the tier, keeps taking new windows once full (its least
recently used evicted), and drops a block's window page when the tier drops the block; an engine restarted on it
reads back the windows it kept, verified, and recomputes those that fail verification: outputs equal a cache-off
run's throughout."""

from __future__ import annotations

import os

import pytest

from agentkv.engine.llm import LLM
from agentkv.engine.sequence import SamplingParams
from agentkv.kvcache.block_hash import BlockKey
from tests.engine.conftest import prompts, write_checkpoint
from tests.engine.test_llm import kv_bytes

GREEDY = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)


def outputs(done) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in done]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A gemma3 checkpoint (sliding layers, window 8), 10 prompts of 40-90 tokens (89 blocks of 8), their
    cache-off outputs, and a KV budget of 16 pool pages."""
    folder = write_checkpoint(tmp_path_factory.mktemp("gemma3"), "gemma3", seed=2)
    ps = prompts(10, seed=7, lo=40, hi=90)
    expected = outputs(LLM(str(folder), dtype="float32", block_size=8, enable_prefix_caching=False)
                       .generate(ps, GREEDY))
    return folder, ps, expected, kv_bytes(folder, 16)


def engine(case, tier: str) -> LLM:
    folder, _, _, budget = case
    return LLM(str(folder), dtype="float32", block_size=8, kv_cache_bytes=budget, kv_tiers=tier,
               check_invariants=True)


def test_the_window_folder_is_bounded_takes_new_windows_and_drops_with_the_tier(case, tmp_path):
    """A disk tier of 256 tokens: its window folder holds 26 pages, fewer than the 89 blocks named."""
    _, ps, expected, _ = case
    llm = engine(case, f"disk=256@{tmp_path}")
    full, window = llm.tiering.stores[0], llm.tiering.window[0]
    seen = []
    for half in (slice(0, 5), slice(5, 10)):
        assert outputs([llm.generate([p], GREEDY)[0] for p in ps[half]]) == expected[half]
        llm.tiering.mover.barrier(window.store).result()
        seen.append(set(window.store.index))
    disk = window.store
    assert len(disk.index) <= disk.capacity_pages < sum(len(p) // 8 for p in ps) and disk.evicted > 0
    assert seen[1] - seen[0], "a full window folder still takes the newest windows"
    llm.tiering.mover.barrier(full.store).result()
    both = [BlockKey(d, b"") for d in set(full.store.index) & set(disk.index)][:3]
    assert both
    full.drop(both)  # what the pool does when the core evicts a block from the tier
    llm.tiering.mover.barrier(window.store).result()
    assert not disk.contains(both).any() and not full.store.contains(both).any()
    llm.close()


def test_a_restart_reads_back_verified_windows_and_recomputes_corrupted_ones(case, tmp_path):
    _, ps, expected, _ = case
    spec = f"disk=1024@{tmp_path}"
    first = engine(case, spec)
    first.generate(ps, GREEDY)
    first.close()
    restarted = engine(case, spec)
    assert outputs([restarted.generate([p], GREEDY)[0] for p in ps]) == expected
    assert restarted.sliding.restored > 0 and restarted.sliding.rewound_tokens == 0
    disk = restarted.tiering.window[0].store
    restarted.close()
    with open(tmp_path / "window" / "seg00000.kv", "r+b") as f:  # every window page's bytes flipped
        for offset in range(disk.head_room, os.fstat(f.fileno()).st_size - disk.page_bytes + 1, disk.slot_bytes):
            f.seek(offset)
            flipped = bytes(255 - b for b in f.read(disk.page_bytes))
            f.seek(offset)
            f.write(flipped)
    again = engine(case, spec)
    assert outputs([again.generate([p], GREEDY)[0] for p in ps]) == expected
    assert again.sliding.restored == 0 and again.sliding.rewound_tokens > 0
    again.close()
