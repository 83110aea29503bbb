"""DeepSeek-V3 on a tiny random checkpoint transformers writes (`conftest.deepseek`: MLA with low-rank
queries, YaRN with DeepSeek's mscales, a dense layer then grouped-routing MoE with a shared expert): logits and
greedy continuations equal to transformers', also after a prefix hit, a preemption and a reload from DRAM
(V2's checkpoint too: the same MLA with a softmax router);
the pool's pages hold the latent (the bytes `kvcache/sizing.py` prices), on fp8/int8/int4 pages too; the
absorbed path equals the unabsorbed one."""

from __future__ import annotations

import pytest
import torch

from agentkv.codecs import get_codec
from agentkv.engine.llm import LLM
from agentkv.engine.pages import PageLayout
from agentkv.kernels.attention import SeqSlice
from agentkv.kvcache.sizing import codec, kv_bytes_per_block
from agentkv.model.loader import load_model
from tests.codecs.test_engine_codecs import GREEDY, engine, outputs
from tests.engine.conftest import hf_model, kv_eval_and_transformers_ppl, prompts, write_checkpoint

ATOL = 1e-4  # fp32 pages against transformers' fp32 forward (as test_model_vs_hf.py)
ABSORBED_ATOL = 1e-5  # absorbed vs unabsorbed, both fp32: the same sums in another order
BS = 8


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_checkpoint(tmp_path_factory.mktemp("deepseek_v3"), "deepseek_v3", seed=2)


@pytest.fixture(scope="module", params=["deepseek_v3", "deepseek_v2"])
def family_folder(request, folder, tmp_path_factory):
    """V3's checkpoint, and V2's (the same MLA, a softmax router limited to the best groups)."""
    if request.param == "deepseek_v3":
        return folder
    return write_checkpoint(tmp_path_factory.mktemp("deepseek_v2"), "deepseek_v2", seed=2)


@pytest.fixture(scope="module")
def ps():
    return prompts(5, seed=9, lo=20, hi=70)


def paged(model, n_blocks=64, name="fp32"):
    """Every layer's latent pages over one slab, and the backend bound to it."""
    layout = PageLayout.of_model(get_codec(name), model.config, model.config.num_layers, BS)
    model.model.layers[0].self_attn.backend.bind(4, n_blocks, torch.device("cpu"))
    return layout.views(torch.zeros(n_blocks, layout.page_bytes, dtype=torch.uint8))


def run(model, caches, tokens, start, table):
    """Forward `tokens` at positions start.. of one sequence whose blocks are `table`."""
    backend = model.model.layers[0].self_attn.backend
    backend.release_row(0)
    meta = backend.prepare([SeqSlice(0, table, len(tokens), start + len(tokens))], int(len(tokens) > 1), BS)
    return model.logits(model(torch.tensor(tokens), torch.arange(start, start + len(tokens)), caches, meta))


def test_config_reads_mla_and_grouped_routing(family_folder):
    cfg = load_model(str(family_folder), "float32").config
    v3 = cfg.family == "deepseek_v3"
    assert cfg.head_dim == 16 and cfg.interleaved_rope and cfg.norm_topk_prob == v3
    assert (cfg.mla.kv_lora_rank, cfg.mla.q_lora_rank, cfg.mla.qk_nope_head_dim, cfg.mla.v_head_dim) == (32, 48, 32, 24)
    r = cfg.routing
    assert (r.groups, r.topk_groups, r.scaling, r.shared, r.sigmoid) == (4, 2, 2.5, 1, v3)
    assert cfg.moe_layers == (False, True, True)
    assert [g.kind for g in cfg.layer_groups()] == ["mla"]
    weights = sum(p.numel() for p in hf_model(family_folder).parameters() if p.dim() > 1)  # norms aside
    assert cfg.spec("m").params_total == weights  # MLA's projections, shared experts and router counted


def test_logits_match_transformers_prefill_decode_and_prefix_hit(family_folder):
    ours, ref = load_model(str(family_folder), "float32"), hf_model(family_folder)
    p = prompts(1, seed=3, lo=60, hi=61)[0]
    caches = paged(ours)
    table = [9, 2, 31, 7, 40, 5, 11, 3]  # blocks scattered through the pool
    with torch.no_grad():
        full = ref(torch.tensor([p])).logits[0]
    assert torch.allclose(run(ours, caches, p[:50], 0, table), full[:50], atol=ATOL)
    for i in range(50, 60):  # decodes: the absorbed path over the latent pages
        assert torch.allclose(run(ours, caches, [p[i]], i, table)[0], full[i], atol=ATOL), i
    b = p[:32] + prompts(1, seed=6, lo=20, hi=21)[0]  # shares A's first 4 blocks, prefills its own suffix
    with torch.no_grad():
        full_b = ref(torch.tensor([b])).logits[0]
    assert torch.allclose(run(ours, caches, b[32:], 32, [9, 2, 31, 7, 42, 43, 44]), full_b[32:], atol=ATOL)


def test_half_split_rope_matches_too(folder, tmp_path):
    """`rope_interleave: false` (RoPE on the two halves of the RoPE dims, not adjacent pairs) matches as well."""
    import json
    import shutil

    shutil.copytree(folder, tmp_path / "halves")
    raw = json.loads((tmp_path / "halves" / "config.json").read_text())
    (tmp_path / "halves" / "config.json").write_text(json.dumps({**raw, "rope_interleave": False}))
    ours, ref = load_model(str(tmp_path / "halves"), "float32"), hf_model(tmp_path / "halves")
    assert not ours.config.interleaved_rope
    p = prompts(1, seed=3, lo=40, hi=41)[0]
    with torch.no_grad():
        want = ref(torch.tensor([p])).logits[0]
    assert torch.allclose(run(ours, paged(ours), p, 0, [3, 1, 4, 5, 9]), want, atol=ATOL)


def test_prefill_expands_its_context_a_piece_at_a_time(folder, monkeypatch):
    """A budget of one page a piece: the 40-token prefill's online softmax crosses 5 pieces, a second chunk of
    10 queries 7 (the first 5 from the cache); logits still transformers'."""
    from agentkv.model import deepseek_v3

    monkeypatch.setattr(deepseek_v3, "BUDGET", BS * 4 * 56)  # heads 4 × (no-RoPE key 32 + value 24) a token
    ours, ref = load_model(str(folder), "float32"), hf_model(folder)
    p = prompts(1, seed=8, lo=50, hi=51)[0]
    caches, table = paged(ours), [5, 9, 1, 12, 30, 2, 7]
    with torch.no_grad():
        full = ref(torch.tensor([p])).logits[0]
    assert torch.allclose(run(ours, caches, p[:40], 0, table), full[:40], atol=ATOL)
    assert torch.allclose(run(ours, caches, p[40:], 40, table), full[40:], atol=ATOL)


def test_absorbed_equals_unabsorbed(folder):
    """The same prefill through both paths over the same pages: logits within ABSORBED_ATOL, and both far
    from a model whose W_UK is perturbed (the comparison sees the absorption)."""
    model = load_model(str(folder), "float32")
    p = prompts(1, seed=4, lo=45, hi=46)[0]
    caches, table = paged(model), [3, 1, 4, 15, 9, 2]
    unabsorbed = run(model, caches, p, 0, table)
    for layer in model.model.layers:
        layer.self_attn.absorb_prefill = True
    absorbed = run(model, caches, p, 0, table)
    assert (absorbed - unabsorbed).abs().max() < ABSORBED_ATOL
    with torch.no_grad():
        model.model.layers[1].self_attn.kv_b_proj.weight[:32] += 0.05  # head 0's W_UK
    assert (run(model, caches, p, 0, table) - absorbed).abs().max() > 100 * ABSORBED_ATOL


def test_greedy_equals_transformers_after_a_hit_a_preemption_and_a_dram_reload(family_folder, ps):
    """Prefills run unabsorbed, decodes absorbed, and a step with both splits its rows between the paths."""
    folder, ref = family_folder, hf_model(family_folder)
    with torch.no_grad():
        expected = [ref.generate(torch.tensor([p]), max_new_tokens=6, do_sample=False, eos_token_id=None,
                                 pad_token_id=0, min_new_tokens=6)[0, len(p):].tolist() for p in ps]
    llm = engine(folder, "fp32")
    assert outputs(llm, ps) == expected
    again = [llm.generate([p], GREEDY)[0] for p in ps]
    assert [o.outputs[0].token_ids for o in again] == expected and all(o.num_cached_tokens > 0 for o in again)
    chunked = engine(folder, "fp32", max_num_batched_tokens=32)  # steps mixing prefill chunks and decodes
    assert outputs(chunked, ps) == expected
    page = llm.layout.page_bytes
    tight = engine(folder, "fp32", kv_cache_bytes=page * 12)
    assert outputs(tight, ps) == expected and tight.scheduler.preemptions > 0
    tiered = engine(folder, "fp32", kv_cache_bytes=page * 16, host_kv_bytes=page * 200)
    outputs(tiered, ps)
    back = [tiered.generate([p], GREEDY)[0] for p in ps]
    assert [o.outputs[0].token_ids for o in back] == expected
    assert sum(o.cached_tokens_per_tier["dram"] for o in back) > 0


@pytest.mark.parametrize("name", ["fp8", "int8", "int4"])
def test_quantized_latent_pages_hit_preempt_and_reload(folder, ps, name):
    """A cached or reloaded latent page is the very bytes a recompute writes: the cache-off run's outputs."""
    expected = outputs(engine(folder, name, enable_prefix_caching=False), ps)
    llm = engine(folder, name)
    assert outputs(llm, ps) == expected
    again = [llm.generate([p], GREEDY)[0] for p in ps]
    assert [o.outputs[0].token_ids for o in again] == expected and all(o.num_cached_tokens > 0 for o in again)
    page = llm.layout.page_bytes
    tight = engine(folder, name, kv_cache_bytes=page * 12)
    assert outputs(tight, ps) == expected and tight.scheduler.preemptions > 0
    tiered = engine(folder, name, kv_cache_bytes=page * 16, host_kv_bytes=page * 200)
    outputs(tiered, ps)
    back = [tiered.generate([p], GREEDY)[0] for p in ps]
    assert [o.outputs[0].token_ids for o in back] == expected
    assert sum(o.cached_tokens_per_tier["dram"] for o in back) > 0


@pytest.mark.parametrize("name", ["bf16", "fp8", "int8", "int4", "int4-kivi"])
def test_pool_pages_hold_the_latent_as_sizing_prices_it(folder, name):
    """One page: 3 layers × 8 tokens × one vector of latent 32 + RoPE key 16 (and the codec's scales), what
    `kv_bytes_per_block` prices for the MLA group; full K/V of 4 heads × (48 + 24) would be 3x the bf16 bytes."""
    llm = LLM(str(folder), dtype="float32", kv_codec=name, block_size=BS, kv_cache_bytes=2**22)
    spec = llm.config.spec(str(folder))
    assert [g.kind for g in spec.groups] == ["mla"] and (spec.groups[0].latent, spec.groups[0].rope) == (32, 16)
    assert llm.layout.page_bytes == kv_bytes_per_block(spec, codec(name), BS)
    if name == "bf16":
        assert llm.layout.page_bytes == 3 * BS * (32 + 16) * 2 and not llm.layout.v_fields
    assert llm.cache.tiers[0].capacity_blocks == 2**22 // llm.layout.page_bytes


def test_the_start_up_line_names_the_mla_group(folder):
    from agentkv.server.startup import summary

    llm = LLM(str(folder), dtype="float32", block_size=BS, kv_cache_bytes=2**22)
    assert "model m (3 layers: 3 mla, MoE 8 experts top-2 on 2 layers" in summary(llm, "m", 4096, None, 0)


@pytest.mark.parametrize(("change", "says"), [
    ({"n_group": 3}, r"config.json: fields 'n_routed_experts', 'n_group'.*8 experts in 3 groups"),
    ({"n_group": 8}, r"config.json: field 'n_group': 8 groups leave fewer than 2 of 8 experts each"),
    ({"scoring_func": "softmax"}, r"config.json: fields 'scoring_func'/'topk_method': softmax with noaux_tc is not"),
    ({"kv_lora_rank": None}, r"config.json: field 'kv_lora_rank': missing"),
    ({"quantization_config": {"quant_method": "awq"}}, r"config.json: field 'quantization_config': only fp8"),
])
def test_a_bad_config_is_one_clear_line(folder, tmp_path, change, says):
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    raw = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**raw, **change}))
    with pytest.raises(ValueError, match=says):
        load_model(str(bad), "float32")


def test_kv_eval_scores_what_transformers_scores(folder):
    """kv-eval's reference (bf16 latent pages, chunks of 20, every row absorbed) scores the perplexity
    transformers does; fp8's error on the latent is measured beside it, priced at the latent's bytes."""
    (ref, fp8), ppl = kv_eval_and_transformers_ppl(folder, BS)
    assert ref.ppl == pytest.approx(ppl, rel=2e-3)
    assert fp8.kl > 0 and all(e > 0 for e in fp8.attn_rel_err)
    assert fp8.bytes_per_token == 3 * (32 + 16 + 2)  # per layer: 48 fp8 codes and one fp16 scale


def test_the_published_mtp_layer_is_skipped_and_other_strays_refused(folder, tmp_path):
    """DeepSeek-V3's checkpoints carry a multi-token-prediction layer after the last (`model.layers.61.*`):
    loaded past, the model unchanged; an unknown tensor inside the model is still refused."""
    import json
    import shutil

    from safetensors.torch import save_file

    def with_shard(tensors: dict[str, torch.Tensor], where) -> str:
        shutil.copytree(folder, where)
        save_file(tensors, str(where / "extra.safetensors"))
        index = json.loads((where / "model.safetensors.index.json").read_text())
        index["weight_map"].update({k: "extra.safetensors" for k in tensors})
        (where / "model.safetensors.index.json").write_text(json.dumps(index))
        return str(where)

    mtp = with_shard({"model.layers.3.eh_proj.weight": torch.ones(64, 128),
                      "model.layers.3.self_attn.kv_b_proj.weight": torch.ones(224, 32)}, tmp_path / "mtp")
    p = prompts(1, seed=3, lo=20, hi=21)[0]
    base, extra = load_model(str(folder), "float32"), load_model(mtp, "float32")
    assert torch.equal(run(base, paged(base), p, 0, [1, 2, 3]), run(extra, paged(extra), p, 0, [1, 2, 3]))
    stray = with_shard({"model.layers.1.self_attn.extra.weight": torch.ones(2)}, tmp_path / "stray")
    with pytest.raises(ValueError, match=r"tensor 'model\.layers\.1\.self_attn\.extra\.weight' is not part of"):
        load_model(stray, "float32")


def test_bf16_weights_keep_the_router_fp32_and_run_close_to_fp32(folder):
    hi, lo = load_model(str(folder), "float32"), load_model(str(folder), "bfloat16")
    gate = lo.model.layers[1].mlp.gate
    assert gate.weight.dtype == gate.e_score_correction_bias.dtype == torch.float32
    assert lo.model.layers[1].mlp.experts[0].gate_proj.weight.dtype == torch.bfloat16
    p = prompts(1, seed=8, lo=30, hi=31)[0]
    a = run(hi, paged(hi), p, 0, [1, 2, 3, 4])
    b = run(lo, paged(lo, name="bf16"), p, 0, [1, 2, 3, 4])
    assert (a - b).abs().max() < 0.1 * a.abs().max()


def fp8_blocks_of(w: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] as e4m3 codes and one fp32 scale per block × block (the published layout), by the
    quantizer's rule: each block's absolute max maps to e4m3's 448."""
    rows, cols = w.shape
    grid = torch.zeros(-(-rows // block) * block, -(-cols // block) * block)
    grid[:rows, :cols] = w
    tiles = grid.view(grid.shape[0] // block, block, grid.shape[1] // block, block)
    scale = tiles.abs().amax(dim=(1, 3)) / 448.0 + 1e-12
    codes = (tiles / scale[:, None, :, None]).to(torch.float8_e4m3fn).view_as(grid)[:rows, :cols]
    return codes.contiguous(), scale


def test_block_fp8_weights_load_as_published(folder, tmp_path):
    """A checkpoint in DeepSeek-V3's published format (fp8 e4m3 linear weights with a `_scale_inv` per 16 × 16
    block here, norms, embeddings and the router unquantized) loads dequantized: logits equal transformers' on
    a checkpoint of the dequantized weights. A weight whose scales are missing is one clear error."""
    import json
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    published, dequantized = {}, {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), "pt") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                w = f.get_tensor(name)
                dequantized[name] = published[name] = w
                if w.dim() == 2 and "proj" in name:  # attention and expert projections, as DeepSeek quantizes
                    codes, scale = fp8_blocks_of(w, 16)
                    published[name], published[name + "_scale_inv"] = codes, scale
                    dequantized[name] = codes.float() * scale.repeat_interleave(16, 0)[: w.shape[0]] \
                        .repeat_interleave(16, 1)[:, : w.shape[1]]
    raw = json.loads((folder / "config.json").read_text())
    for where, tensors, quant in ((tmp_path / "fp8", published, {
            "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [16, 16]}),
            (tmp_path / "dequantized", dequantized, None)):
        where.mkdir()
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(folder / f, where / f)
        (where / "config.json").write_text(json.dumps({**raw, "quantization_config": quant}))
        save_file(tensors, str(where / "model.safetensors"))
    ours = load_model(str(tmp_path / "fp8"), "float32")
    assert ours.model.layers[1].self_attn.kv_b_proj.weight.dtype == torch.float32
    p = prompts(1, seed=3, lo=40, hi=41)[0]
    with torch.no_grad():
        want = hf_model(tmp_path / "dequantized")(torch.tensor([p])).logits[0]
    assert torch.allclose(run(ours, paged(ours), p, 0, [3, 1, 4, 5, 9]), want, atol=ATOL)
    del published["model.layers.0.self_attn.o_proj.weight_scale_inv"]
    save_file(published, str(tmp_path / "fp8" / "model.safetensors"))
    with pytest.raises(ValueError, match=r"fp8 tensor 'model\.layers\.0\.self_attn\.o_proj\.weight' lacks its "
                                         r"'model\.layers\.0\.self_attn\.o_proj\.weight_scale_inv'"):
        load_model(str(tmp_path / "fp8"), "float32")
