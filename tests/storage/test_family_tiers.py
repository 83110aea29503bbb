"""Every family through the disk and Redis tiers (a real redis-server): a pool too small for the batch preempts
and demotes, the prompts come back from the tier below the GPU, and an engine restarted on the same disk folder
or Redis finds the prefixes there; greedy outputs equal a cache-off run's after each reload. (DRAM reloads and
fp8/int8/int4 pages per family: tests/engine/test_families.py and tests/codecs/test_engine_codecs.py.)

The sliding and chunked layers' own pages (engine/sliding.py) go down to the disk and Redis stores beside the
pool's: an engine restarted on the tier reads a hit's window back with it (a chunked family's hit at a chunk
boundary needs none).

Qwen3-Next's linear layers keep state snapshots on the device only (engine/state_slots.py): its full-attention
pages go down to the tiers and come back, but an engine restarted on a tier has no DeltaNet state at any hit's
boundary, so every hit it finds is recomputed from block 0 and counts as no cached token (outputs still equal;
no snapshot restored). Within one engine a hit reloaded from the tier restores a snapshot still on the device,
so there the tier's tokens count as cached as for every other family."""

from __future__ import annotations

import pytest

from agentkv.engine.llm import LLM
from agentkv.engine.sequence import SamplingParams
from tests.engine.conftest import EVERY_FAMILY, prompts, write_checkpoint
from tests.engine.test_llm import kv_bytes

GREEDY = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
TIERS = {"disk": "disk=4MiB@{folder}", "remote": "redis=4MiB@{url}"}  # the engine's name: the --kv-tiers spec


@pytest.fixture(scope="module", params=EVERY_FAMILY)
def case(request, tmp_path_factory):
    folder = write_checkpoint(tmp_path_factory.mktemp(f"tiers-{request.param}"), request.param, seed=2)
    ps = prompts(5, seed=5, lo=40, hi=90)
    ps.append([*ps[0][:48], 3, 4, 5])  # shares 48 tokens (6 blocks) with prompt 0
    plain = LLM(str(folder), dtype="float32", block_size=8, enable_prefix_caching=False)
    return folder, ps, outputs(plain.generate(ps, GREEDY)), kv_bytes(folder, 16)


def outputs(done) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in done]


def engine(case, tier: str, tmp_path, redis_server) -> LLM:
    folder, _, _, budget = case
    spec = TIERS[tier].format(folder=tmp_path, url=redis_server.url)
    return LLM(str(folder), dtype="float32", block_size=8, check_invariants=True, kv_cache_bytes=budget,
               kv_tiers=spec)


@pytest.mark.parametrize("tier", list(TIERS))
def test_preempted_and_demoted_prompts_reload_from_the_tier(case, tier, tmp_path, redis_server):
    _, ps, expected, _ = case
    llm = engine(case, tier, tmp_path, redis_server)
    assert outputs(llm.generate(ps, GREEDY)) == expected and llm.scheduler.preemptions > 0
    again = [llm.generate([p], GREEDY)[0] for p in ps[::-1]][::-1]  # the most recent first: LRU reaches down
    assert outputs(again) == expected
    assert sum(o.cached_tokens_per_tier[tier] for o in again) > 0
    llm.close()


def test_an_engine_restarted_on_disk_or_redis_finds_the_prefixes(case, tmp_path, redis_server):
    folder, ps, expected, budget = case
    both = f"{TIERS['disk']},{TIERS['remote']}".format(folder=tmp_path, url=redis_server.url)
    first = LLM(str(folder), dtype="float32", block_size=8, kv_cache_bytes=budget, kv_tiers=both)
    first.generate(ps, GREEDY)
    first.close()
    for tier in TIERS:
        restarted = engine(case, tier, tmp_path, redis_server)
        back = [restarted.generate([p], GREEDY)[0] for p in ps]
        assert outputs(back) == expected, tier
        if restarted.states is None:
            assert sum(o.cached_tokens_per_tier[tier] for o in back) > 0, tier
        else:  # every prompt's whole blocks found, none with a state at its boundary: all recomputed
            assert sum(o.num_cached_tokens for o in back) == restarted.states.restored_tokens == 0, tier
            assert restarted.states.rewound_tokens == sum((len(p) - 1) // 8 * 8 for p in ps), tier
        if restarted.sliding is not None and not restarted.config.chunked:  # a hit's window: read back too
            assert restarted.sliding.restored > 0 and restarted.sliding.rewound_tokens == 0, tier
        restarted.close()
