"""DeepSeek-V4 on a tiny random checkpoint transformers 5.25 writes (sharded, published tensor names): a sliding
layer, two CSA layers (entries every 4 tokens, a lightning indexer) and an HCA layer (every 16), window 8, mHC
over 4 streams, a hash-routed MoE layer then bias-routed ones; run by the engine over its page groups
(engine/compressed.py). Greedy continuations equal transformers' full forward (its cached `generate` drifts at
indexer near-ties) on prompts crossing many compression windows and the raw window: with every entry selected
(index_topk 64, so the fp4 indexer keys cannot change the output), in one step or in chunks, after a prefix hit
(the compressors' tails rebuilt by a rewind), a preemption, and reloads from DRAM, disk and Redis; with index_topk
3 the engine equals transformers ranking by the fp4 keys the pages hold. The pool's page holds what
`kvcache/sizing.py` prices; fp8/int8/int4 pages run and hit."""

from __future__ import annotations

import json

import pytest
import torch

from agentkv.codecs.fp4 import fp4_round_trip
from agentkv.engine.llm import LLM
from agentkv.engine.sequence import SamplingParams
from agentkv.kvcache.sizing import codec, kv_bytes_per_block
from agentkv.model.config import ModelConfig
from tests.codecs.test_engine_codecs import first_logits
from tests.engine.conftest import V4_KINDS as KINDS
from tests.engine.conftest import (
    deepseek_v4,
    kv_eval_and_transformers_ppl,
    prompts,
    write_checkpoint,
    write_tokenizer,
)
from tests.storage.conftest import redis_server  # noqa: F401 (a real redis-server, for the Redis tier)

BS = 16  # a multiple of both compression ratios: a page holds whole entries
GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """index_topk 3: the indexer's choice binds."""
    path = tmp_path_factory.mktemp("deepseek_v4")
    torch.manual_seed(3)
    deepseek_v4(index_topk=3).float().eval().save_pretrained(str(path), max_shard_size="60KB")
    write_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """index_topk 64, more than any prompt here has entries: every closed entry is attended."""
    return write_checkpoint(tmp_path_factory.mktemp("deepseek_v4_wide"), "deepseek_v4", seed=3)


@pytest.fixture(scope="module")
def coarse(tmp_path_factory):
    """HCA compressing 32 to 1 (the published V4-Flash: 128), every entry attended: a block of 16 cannot hold
    whole entries, so the engine's default block size is 32."""
    path = tmp_path_factory.mktemp("deepseek_v4_coarse")
    torch.manual_seed(3)
    deepseek_v4(index_topk=64, hca_ratio=32).float().eval().save_pretrained(str(path))
    write_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def ps():
    """Prompts of 40-75 tokens (10-18 CSA entries, 2-4 HCA entries, the raw window long passed); the last shares
    its first 40 tokens with the first."""
    out = prompts(4, seed=5, lo=40, hi=76)
    return [*out, [*out[0][:40], 7, 8, 9]]


def reference(folder, ps, fp4_keys: bool = False) -> list[list[int]]:
    """Each prompt's greedy continuation by transformers' full forward (no cache), token by token; with
    `fp4_keys` its indexer ranks the keys as the pages give them back (fp4)."""
    from transformers import DeepseekV4ForCausalLM

    hf = DeepseekV4ForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    if fp4_keys:
        for layer in hf.model.layers:
            compressor = getattr(layer.self_attn, "compressor", None)
            if hasattr(compressor, "indexer"):
                compressor.indexer.scorer.register_forward_pre_hook(
                    lambda _, args: (args[0], fp4_round_trip(args[1]), args[2]))
    out = []
    for prompt in ps:
        seq = list(prompt)
        for _ in range(GREEDY.max_tokens):
            with torch.no_grad():
                seq.append(int(hf(torch.tensor(seq)[None], use_cache=False).logits[0, -1].argmax()))
        out.append(seq[len(prompt) :])
    return out


def engine(folder, name: str = "fp32", **kw) -> LLM:
    kw.setdefault("kv_cache_bytes", 2**22)
    return LLM(str(folder), dtype="float32", kv_codec=name, block_size=BS, check_invariants=True, max_num_seqs=8,
               **kw)


def outputs(done) -> list[list[int]]:
    return [o.outputs[0].token_ids for o in done]


def test_config_reads_layer_kinds_and_routing(folder):
    cfg = ModelConfig.from_dir(str(folder))
    v4 = cfg.v4
    assert cfg.family == "deepseek_v4" and v4 is not None
    assert v4.kinds == ("sliding", "csa", "hca", "csa")
    assert [v4.ratio_of(i) for i in range(4)] == [0, 4, 16, 4]
    assert (v4.dim, v4.rope_dim, v4.window, v4.index_topk, v4.hc_mult) == (32, 8, 8, 3, 4)
    assert v4.hash_layers == (True, False, False, False)
    assert len(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]) > 1


def test_greedy_equals_transformers_in_one_step_in_chunks_and_after_a_hit(wide, ps):
    """Every entry selected: the engine's continuations are transformers' full-forward ones, prefilled whole or
    16 tokens a step (prefill chunks and decodes in one step); a repeated prompt hits its whole blocks, and the
    compressors' tails, which no page holds, are rebuilt by recomputing from one CSA window before the hit."""
    expected = reference(wide, ps)
    llm = engine(wide)
    assert outputs(llm.generate(ps, GREEDY)) == expected
    before = llm.runner.tails.rewound_tokens
    again = [llm.generate([p], GREEDY)[0] for p in ps]
    assert outputs(again) == expected
    assert [o.num_cached_tokens for o in again] == [(len(p) - 1) // BS * BS - 4 for p in ps]  # one CSA window back
    assert llm.runner.tails.rewound_tokens - before == 4 * len(ps)
    chunked = engine(wide, max_num_batched_tokens=16)
    assert outputs(chunked.generate(ps, GREEDY)) == expected
    short = [[5], [9, 8, 7]]  # no window closed before the first tokens: the indexer has nothing to rank
    assert outputs(llm.generate(short, GREEDY)) == reference(wide, short)


def test_preemption_and_a_dram_reload(wide, ps):
    expected = reference(wide, ps)
    page = engine(wide).layout.page_bytes
    tight = engine(wide, kv_cache_bytes=tight_budget(wide, 12))
    assert outputs(tight.generate(ps, GREEDY)) == expected and tight.scheduler.preemptions > 0
    tiered = engine(wide, kv_cache_bytes=tight_budget(wide, 16), host_kv_bytes=page * 200)
    tiered.generate(ps, GREEDY)
    back = [tiered.generate([p], GREEDY)[0] for p in ps]
    assert outputs(back) == expected and sum(o.cached_tokens_per_tier["dram"] for o in back) > 0


def tight_budget(folder, pages: int, name: str = "fp32") -> int:
    """A KV budget of `pages` pool pages beside the raw windows' pages and the compressors' tails."""
    llm = engine(folder, name)
    from agentkv.engine.sliding import SlidingPages

    least = SlidingPages.floor(8, 2048, llm.sliding.window, BS) * llm.sliding.layout.page_bytes
    return pages * llm.layout.page_bytes + least + llm.runner.tails.nbytes


def test_an_engine_restarted_on_disk_or_redis_finds_the_prefixes(wide, ps, tmp_path, redis_server):  # noqa: F811
    """The entries' pages and the raw windows' pages go down to disk and Redis; a restarted engine reads a hit's
    entries and window back and rebuilds the tails by a rewind."""
    expected = reference(wide, ps)
    tiers = {"disk": f"disk=4MiB@{tmp_path}", "remote": f"redis=4MiB@{redis_server.url}"}
    first = engine(wide, kv_tiers=",".join(tiers.values()))
    assert outputs(first.generate(ps, GREEDY)) == expected
    first.close()
    for tier, spec in tiers.items():
        restarted = engine(wide, kv_tiers=spec)
        back = [restarted.generate([p], GREEDY)[0] for p in ps]
        assert outputs(back) == expected, tier
        assert sum(o.cached_tokens_per_tier[tier] for o in back) > 0 and restarted.sliding.restored > 0, tier
        restarted.close()


def test_the_indexer_ranks_the_fp4_keys_the_pages_hold(folder, ps):
    """index_topk 3 of up to 18 entries: the engine's continuations are those of transformers ranking by the fp4
    round trip of its keys (the selection binds: full-precision keys give other continuations)."""
    got = outputs(engine(folder).generate(ps, GREEDY))
    assert got == reference(folder, ps, fp4_keys=True)
    assert got != reference(folder, ps)


@pytest.mark.parametrize("name", ["bf16", "fp8", "int8", "int4", "int4-kivi"])
def test_pool_pages_hold_what_sizing_prices(folder, name):
    """One page: 2 CSA layers x 4 entries (32 values, as the codec stores a value, and 16 fp4 indexer values + a
    4-byte scale each) + 1 HCA layer x 1 entry; no raw window (its pages are the sliding group's)."""
    llm = engine(folder, name)
    spec = llm.config.spec(str(folder))
    assert llm.layout.page_bytes == kv_bytes_per_block(spec, codec(name), BS)
    if name == "bf16":
        assert llm.layout.page_bytes == 2 * 4 * (32 * 2 + 8 + 4) + 32 * 2
    assert llm.sliding.layout.page_bytes == 4 * BS * codec(name).half_block_bytes(1, 1, 32, keys=False)


@pytest.mark.parametrize("name", ["bf16", "fp8", "int8", "int4"])
def test_at_v4_flash_shape_pages_and_tails_are_the_catalogs(name):
    """The published V4-Flash's attention shape (the catalog's `deepseek-v4-flash`, from its config.json as
    data/models.toml cites it): 2 sliding + 21 CSA + 20 HCA layers, K=V of 512, indexer 64 x 128 keeping 512,
    ratios 4 and 128, window 128. With blocks of 128 (the block size the engine takes where none is given) a pool
    page is what the catalog's sizing prices, and a sequence's compressor tails are the partial-window bytes the
    catalog gives each compressed layer."""
    from agentkv.catalog import models
    from agentkv.codecs import get_codec
    from agentkv.engine.block_size import BlockSize, block_size_for
    from agentkv.engine.compressed import CompressedLayout, CompressorTails
    from agentkv.model.deepseek_config import CompressedShape

    flash = CompressedShape(("sliding",) * 2 + ("csa", "hca") * 20 + ("csa",), 512, 64, 1024, 128, 4, 128, 64, 128,
                            512, 8, 1024, 4, 20, 1e-6, 160000.0, (), (False,) * 43, 10.0)
    spec = models()["deepseek-v4-flash"]
    assert CompressedLayout.of_model(get_codec(name), flash, 128).page_bytes == \
        kv_bytes_per_block(spec, codec(name), 128)
    assert CompressorTails(flash, 1, torch.device("cpu")).nbytes == sum(g.layers * g.state_bytes for g in spec.groups)
    with pytest.raises(ValueError, match=r"multiple of every compression ratio \(128\)"):
        CompressedLayout.of_model(get_codec(name), flash, 16)
    assert block_size_for(flash, None) == BlockSize(128, "block size 128: a multiple of V4's compression ratios "
                                                         "(4, 128)")


@pytest.mark.parametrize("name", ["fp8", "int8", "int4"])
def test_quantized_pages_hit_and_preempt(folder, ps, name):
    """Lossy pages: a hit and a preemption give what the cache-off run gives (the same bytes are read)."""
    expected = outputs(engine(folder, name, enable_prefix_caching=False).generate(ps, GREEDY))
    llm = engine(folder, name)
    assert outputs(llm.generate(ps, GREEDY)) == expected
    again = [llm.generate([p], GREEDY)[0] for p in ps]
    assert outputs(again) == expected and all(o.num_cached_tokens > 0 for o in again)
    tight = engine(folder, name, kv_cache_bytes=tight_budget(folder, 12, name))
    assert outputs(tight.generate(ps, GREEDY)) == expected and tight.scheduler.preemptions > 0


def test_the_start_up_line_names_the_layer_groups(folder):
    from agentkv.server.startup import summary

    line = summary(engine(folder), "m", 4096, None, 0)
    assert "4 layers: 1 sliding + 2 CSA (an entry per 4 tokens, top 3) + 1 HCA (per 16), raw window 8 (" in line


def test_kv_eval_scores_what_transformers_scores(wide):
    """kv-eval over V4's own page groups: its reference (bf16 pages, chunks of 20 over windows of 48) scores the
    perplexity transformers does; fp8's error is measured beside it, layer by layer on the reference's inputs."""
    (ref, fp8), ppl = kv_eval_and_transformers_ppl(wide, block_size=BS)
    assert ref.ppl == pytest.approx(ppl, rel=2e-3)
    assert fp8.kl > 0 and len(fp8.attn_rel_err) == 4 and all(e > 0 for e in fp8.attn_rel_err)


@pytest.mark.parametrize("command", ["kv-eval", "serve"])
def test_commands_load_the_folder_and_name_its_groups(coarse, command):
    """`agentkv kv-eval` and `agentkv serve` (the entry point as installed) load a V4 folder whose HCA ratio (32)
    the usual block size (16) cannot hold, with no --block-size: both take blocks of 32; serve's start-up line
    names the layer groups and says why (stopped once it has printed it)."""
    import socket
    import subprocess
    import sys

    argv = [sys.executable, "-c", "import sys; from agentkv.cli import main; sys.exit(main())", command, "--model",
            str(coarse), "--device", "cpu"]
    if command == "kv-eval":
        run = subprocess.run([*argv, "--context", "48", "--windows", "1", "--json"], capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        ev = json.loads(run.stdout)
        assert ev["block_size"] == 32 and [r["codec"] for r in ev["results"]] == ["bf16", "fp8", "int8", "int4"]
        return
    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with subprocess.Popen([*argv, "--port", str(port)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          text=True) as server:
        try:
            line = next(line for line in server.stderr if "agentkv serve: model" in line)
        finally:
            server.terminate()
    assert "4 layers: 1 sliding + 2 CSA (an entry per 4 tokens, top 64) + 1 HCA (per 32), raw window 8" in line
    assert " blocks of 32 tokens (block size 32: a multiple of V4's compression ratios (4, 32); " in line


def test_the_block_size_follows_the_compression_ratios_when_none_is_given(coarse, ps):
    """No block size given: the least multiple of the ratios (4, 32) at or above 16, said on the start-up line;
    greedy continuations equal transformers' there. A block size given that splits an entry is refused."""
    from agentkv.server.startup import summary

    llm = LLM(str(coarse), dtype="float32", kv_cache_bytes=2**22, max_num_seqs=8, check_invariants=True)
    assert (llm.block_size, llm.block_size_why) == (32, "block size 32: a multiple of V4's compression ratios (4, 32)")
    assert " blocks of 32 tokens (block size 32: a multiple of V4's compression ratios (4, 32); " in \
        summary(llm, "m", 4096, None, 0)
    assert outputs(llm.generate(ps[:2], GREEDY)) == reference(coarse, ps[:2])
    with pytest.raises(ValueError, match=r"block size 16 \(--block-size\).* every compression ratio \(32\)"):
        LLM(str(coarse), dtype="float32", block_size=16, kv_cache_bytes=2**22, max_num_seqs=8)
    assert LLM(str(coarse), dtype="float32", block_size=64, kv_cache_bytes=2**22, max_num_seqs=8).block_size_why == ""


def test_the_activation_profile_leaves_the_engine_as_it_was(wide, ps):
    """On CUDA the KV budget is what a profiled forward pass over scratch pages (both groups, one tail row)
    leaves; here (CPU, 0 bytes counted) the pass runs, and the engine's tables and tails are untouched by it."""
    expected = outputs(engine(wide).generate(ps[:2], GREEDY))
    llm = engine(wide)
    llm.generate(ps[2:3], GREEDY)
    assert llm.runner.profile_activations(40) == 0
    assert outputs(llm.generate(ps[:2], GREEDY)) == expected


def test_refusals_are_one_line(folder):
    """A block size that would split an entry across pages, and the Triton backend: one line each, naming them
    (the CLI prints it without a traceback)."""
    import subprocess
    import sys

    with pytest.raises(ValueError, match="block size must be a multiple of every compression ratio"):
        LLM(str(folder), dtype="float32", block_size=8, kv_cache_bytes=2**22)
    run = subprocess.run([sys.executable, "-c", "import sys; from agentkv.cli import main; sys.exit(main())", "serve",
                          "--model", str(folder), "--device", "cpu", "--block-size", "8"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].endswith("block size 8 (--block-size): DeepSeek-V4 keeps whole "
                                                         "compressed entries in a page, so the block size must be a "
                                                         "multiple of every compression ratio (16)")
    with pytest.raises(ValueError, match="DeepSeek-V4's compressed attention runs on the torch backend only"):
        LLM(str(folder), dtype="float32", block_size=BS, kv_cache_bytes=2**22, attention_backend="triton")


def test_bad_layer_types_name_the_field(folder, tmp_path):
    raw = json.loads((folder / "config.json").read_text())
    raw["layer_types"] = [*KINDS[:3], "full_attention"]
    with pytest.raises(ValueError, match="field 'layer_types'"):
        ModelConfig.from_hf(raw, "config.json")


def test_spec_counts_transformers_weights_and_prices_each_kind(folder):
    """The config's groups are the catalog's V4 kinds; its parameter count equals transformers' weights (norms,
    sinks and biases aside), so the report can size a V4 folder it is given."""
    from transformers import DeepseekV4ForCausalLM

    from agentkv.kvcache.sizing import entry_bytes, kv_bytes_per_token

    cfg = ModelConfig.from_dir(str(folder))
    groups = cfg.layer_groups()
    assert [(g.kind, g.layers, g.ratio, g.top_k) for g in groups] == \
        [("sliding", 1, 1, 0), ("compressed", 2, 4, 3), ("compressed", 1, 16, 0)]
    assert all(g.window == 8 and g.head_dim == 32 for g in groups) and groups[0].shared_kv
    spec = cfg.spec("m")
    hf = DeepseekV4ForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    assert spec.params_total == sum(p.numel() for p in hf.parameters() if p.dim() > 1)
    fp8 = codec("fp8")
    csa, hca = (entry_bytes(g, spec, fp8, 16) for g in groups[1:])
    assert csa - hca == 16 / 2 + 4  # a CSA entry adds its indexer's key: 16 fp4 values and a 4-byte scale
    assert kv_bytes_per_token(spec, fp8, 16) == 2 * csa / 4 + hca / 16  # the sliding layer's window adds none


@pytest.mark.parametrize("piece", ["whole", "one query"])
def test_first_token_logits_equal_transformers(wide, ps, piece, monkeypatch):
    """fp32 pages against transformers' fp32 forward, within 1e-4 as the other families' tests; also with a
    score budget so small that each prefill attends one query at a time, and each decode alone."""
    from transformers import DeepseekV4ForCausalLM

    from agentkv.model import v4_attention

    if piece == "one query":
        monkeypatch.setattr(v4_attention, "BUDGET", 1)

    hf = DeepseekV4ForCausalLM.from_pretrained(str(wide), dtype=torch.float32).eval()
    with torch.no_grad():
        want = torch.stack([hf(torch.tensor([p]), use_cache=False).logits[0, -1] for p in ps])
    assert (first_logits(engine(wide), ps) - want).abs().max().item() < 1e-4
    if piece == "one query":  # the decodes too, one at a time
        assert outputs(engine(wide).generate(ps, GREEDY)) == reference(wide, ps)


def test_bf16_loads_and_follows_fp32(wide, ps):
    """bf16 weights (the compressors, indexer weights, mHC mixes, sinks and router bias kept fp32, as
    transformers keeps them) on bf16 pages give the fp32 engine's next-token distribution."""
    half = LLM(str(wide), dtype="bfloat16", block_size=BS, kv_cache_bytes=2**22, max_num_seqs=8)
    assert half.model.model.layers[1].attn.compressor.wkv.weight.dtype == torch.float32
    assert half.codec.name == "bf16"
    p, q = (first_logits(llm, ps).softmax(-1) for llm in (engine(wide), half))
    assert (p - q).abs().sum(-1).max().item() < 0.1
