"""DeepSeek-V3's (and V2's) shape beyond the Llama family's, read from its config.json: multi-head latent
attention (MLA) and grouped top-k routing. Kept apart from `config.py` so the family's fields have one home
(and no torch: the catalog and the policy core read them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True, frozen=True)
class MLAShape:
    """What an MLA layer keeps and expands: per token one latent of `kv_lora_rank` (shared by every head, the
    cache's whole content beside the RoPE key), expanded per head to a no-RoPE key of `qk_nope_head_dim` and a
    value of `v_head_dim`; the RoPE part of the key, `qk_rope_head_dim`, is one vector shared by all heads."""

    kv_lora_rank: int
    q_lora_rank: int  # 0: queries projected straight from the hidden state (no low-rank query)
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def entry_dim(self) -> int:
        """Values a page keeps per token and layer: the latent, then the RoPE key."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    def params(self, hidden: int, heads: int) -> int:
        """One layer's attention weights: the (low-rank) query, the latent and RoPE key, their expansion, out."""
        q = hidden * heads * self.qk_head_dim if not self.q_lora_rank else \
            self.q_lora_rank * (hidden + heads * self.qk_head_dim)
        kv = hidden * self.entry_dim + self.kv_lora_rank * heads * (self.qk_nope_head_dim + self.v_head_dim)
        return q + kv + heads * self.v_head_dim * hidden


@dataclass(slots=True, frozen=True)
class GroupedRouting:
    """DeepSeek's router. V3 (`sigmoid`): sigmoid scores; the experts fall in `groups` groups, a token keeps the
    `topk_groups` groups whose two best (bias-corrected) scores sum highest and picks its top k within them; the
    chosen (unbiased) scores, renormalised where the config says so, are scaled by `scaling`. V2: softmax
    scores, no bias, a group scored by its best expert (`group_limited_greedy`; `greedy`: one group). `shared`
    dense experts run beside the routed ones on every token."""

    groups: int
    topk_groups: int
    scaling: float
    shared: int
    sigmoid: bool = True


def deepseek_fields(raw: dict[str, Any], layers: int, need: Any, path: str, family: str) -> dict[str, Any]:
    """DeepSeek-V3 (and V2): MLA on every layer; the first `first_k_dense_replace` layers dense, the rest MoE
    (every `moe_layer_freq`-th) with shared experts and grouped routing. The RoPE key is `qk_rope_head_dim`
    wide, rotated on adjacent pairs unless `rope_interleave` is false (V3's option; V2 always pairs)."""
    mla = MLAShape(int(need("kv_lora_rank")), int(raw.get("q_lora_rank") or 0), int(need("qk_nope_head_dim")),
                   int(need("qk_rope_head_dim")), int(need("v_head_dim")))
    experts = int(raw.get("n_routed_experts") or raw.get("num_local_experts") or need("n_routed_experts"))
    top_k = int(need("num_experts_per_tok"))
    dense, freq = int(raw.get("first_k_dense_replace") or 0), int(raw.get("moe_layer_freq") or 1)
    return {"mla": mla, "interleaved_rope": bool(raw.get("rope_interleave", True)),
            "num_experts": experts, "experts_per_token": top_k,
            "moe_intermediate_size": int(need("moe_intermediate_size")),
            "norm_topk_prob": bool(raw.get("norm_topk_prob", family == "deepseek_v3")),
            "routing": _routing(raw, experts, top_k, path, v3=family == "deepseek_v3"),
            "moe_layers": tuple(i >= dense and i % freq == 0 for i in range(layers)), "fp8_block": _fp8_block(raw, path)}


def _routing(raw: dict[str, Any], experts: int, top_k: int, path: str, v3: bool) -> GroupedRouting:
    sigmoid = (raw.get("scoring_func") or ("sigmoid" if v3 else "softmax")) == "sigmoid"
    method = raw.get("topk_method") or ("noaux_tc" if v3 else "greedy")
    if (sigmoid, method) not in ((True, "noaux_tc"), (False, "greedy"), (False, "group_limited_greedy")):
        raise ValueError(f"{path}: fields 'scoring_func'/'topk_method': {'sigmoid' if sigmoid else 'softmax'} with "
                         f"{method} is not supported (sigmoid with noaux_tc: DeepSeek-V3's; softmax with greedy or "
                         "group_limited_greedy: V2's)")
    groups = int(raw.get("n_group") or 1) if method != "greedy" else 1
    topk_groups = int(raw.get("topk_group") or groups) if method != "greedy" else 1
    if not 0 < top_k <= experts or experts % groups or not 0 < topk_groups <= groups:
        raise ValueError(f"{path}: fields 'n_routed_experts', 'n_group', 'topk_group', 'num_experts_per_tok': "
                         f"{experts} experts in {groups} groups, top {topk_groups} groups, top-{top_k} do not fit")
    if sigmoid and experts // groups < 2:  # a group's score is its two best experts'
        raise ValueError(f"{path}: field 'n_group': {groups} groups leave fewer than 2 of {experts} experts each")
    return GroupedRouting(groups, topk_groups, float(raw.get("routed_scaling_factor", 1.0)),
                          int(raw.get("n_shared_experts") or 0), sigmoid)


def _fp8_block(raw: dict[str, Any], path: str) -> tuple[int, ...]:
    """The block of one weight scale where the weights are published as block-scaled fp8; () where not."""
    quant = raw.get("quantization_config") or {}
    block = tuple(int(b) for b in quant.get("weight_block_size") or ())
    if quant and (quant.get("quant_method") != "fp8" or quant.get("fmt", "e4m3") != "e4m3" or len(block) != 2):
        raise ValueError(f"{path}: field 'quantization_config': only fp8 e4m3 with a 2-D weight_block_size (as "
                         f"DeepSeek-V3 is published) or unquantized weights are supported, not {quant}")
    return block


V4_KINDS = {"sliding_attention": "sliding", "compressed_sparse_attention": "csa",
            "heavily_compressed_attention": "hca"}  # config.json's `layer_types` -> ours


@dataclass(slots=True, frozen=True)
class CompressedShape:
    """DeepSeek-V4's attention and residual shape. Every layer attends one shared K=V head of `dim` values
    (RoPE on its last `rope_dim`) over its last `window` raw tokens; a `csa` layer also over one compressed entry
    per `csa_ratio` tokens (overlapping windows of twice that), of which a lightning indexer (`index_heads` x
    `index_dim`) keeps `index_topk` per query; an `hca` layer over one entry per `hca_ratio` tokens, all of them.
    The residual is `hc_mult` streams mixed by Sinkhorn-normalised matrices; the first `hash_layers` MoE layers
    route by a fixed token-id table."""

    kinds: tuple[str, ...]  # per layer: sliding, csa or hca
    dim: int
    rope_dim: int
    q_lora_rank: int
    window: int
    csa_ratio: int
    hca_ratio: int
    index_heads: int
    index_dim: int
    index_topk: int
    o_groups: int
    o_lora_rank: int
    hc_mult: int
    hc_iters: int
    hc_eps: float
    compress_theta: float
    compress_rope: tuple[tuple[str, Any], ...]  # the compressed layers' RoPE scaling (YaRN in the published config)
    hash_layers: tuple[bool, ...]
    swiglu_limit: float

    def ratio_of(self, layer: int) -> int:
        """Tokens per compressed entry of `layer` (0: a sliding layer keeps no compressed entries)."""
        return {"sliding": 0, "csa": self.csa_ratio, "hca": self.hca_ratio}[self.kinds[layer]]

    def describe(self) -> str:
        """Its layer groups in words, e.g. '2 sliding + 21 CSA (an entry per 4 tokens, top 512) + 20 HCA (per 128),
        raw window 128'."""
        parts = {"sliding": "sliding", "csa": f"CSA (an entry per {self.csa_ratio} tokens, top {self.index_topk})",
                 "hca": f"HCA (per {self.hca_ratio})"}
        kinds = " + ".join(f"{self.kinds.count(k)} {text}" for k, text in parts.items() if k in self.kinds)
        return f"{kinds}, raw window {self.window}"

    def partial_window_bytes(self, kind: str) -> int:
        """A compressor's unfinished window per sequence and layer, in fp32: the projections and gates of its last
        window (HCA), or of its last two at both series' width (CSA, whose next entry reads the window before, for
        the compressor and its indexer), as the engine's tails hold them (engine/compressed.py) and as the
        catalog prices V4 from vLLM's code (80 KiB a CSA layer, 512 KiB an HCA layer at V4-Flash's shape)."""
        if kind == "hca":
            return 2 * self.hca_ratio * self.dim * 4
        return 2 * (2 * self.csa_ratio) * 2 * (self.dim + self.index_dim) * 4 if kind == "csa" else 0

    def params(self, hidden: int, heads: int) -> int:
        """Every layer's attention and mHC weights (norms and sinks aside): the low-rank query, the K=V projection,
        the grouped output, the compressors (projections, gates, slot biases) and indexers, mHC's mixes; and the
        final mHC collapse."""
        mixes = 2 * (2 + self.hc_mult) * self.hc_mult * self.hc_mult * hidden
        base = hidden * self.q_lora_rank + self.q_lora_rank * heads * self.dim + hidden * self.dim \
            + heads * self.dim * self.o_lora_rank + self.o_groups * self.o_lora_rank * hidden + mixes

        def compressor(dim: int, ratio: int, width: int) -> int:
            return (2 * hidden + ratio) * width * dim

        hca = compressor(self.dim, self.hca_ratio, 1)
        csa = compressor(self.dim, self.csa_ratio, 2) + compressor(self.index_dim, self.csa_ratio, 2) \
            + self.q_lora_rank * self.index_heads * self.index_dim + hidden * self.index_heads
        extra = {"sliding": 0, "csa": csa, "hca": hca}
        return sum(base + extra[k] for k in self.kinds) + self.hc_mult * self.hc_mult * hidden

    def layer_groups(self) -> tuple[Any, ...]:
        """The catalog's view (`LayerGroup`s): the sliding layers' shared K=V window, then the CSA and HCA layers'
        compressed entries beside the same raw window (CSA: sparse, its indexer's keys fp4 as published)."""
        from agentkv.catalog import LayerGroup

        count = {k: self.kinds.count(k) for k in ("sliding", "csa", "hca")}
        groups = [LayerGroup("sliding", count["sliding"], window=self.window, head_dim=self.dim, shared_kv=True),
                  LayerGroup("compressed", count["csa"], window=self.window, head_dim=self.dim, ratio=self.csa_ratio,
                             top_k=self.index_topk, index_heads=self.index_heads, index_dim=self.index_dim,
                             index_bits=4, state_bytes=self.partial_window_bytes("csa")),
                  LayerGroup("compressed", count["hca"], window=self.window, head_dim=self.dim, ratio=self.hca_ratio,
                             state_bytes=self.partial_window_bytes("hca"))]
        return tuple(g for g, n in zip(groups, count.values(), strict=True) if n)


def deepseek_v4_fields(raw: dict[str, Any], layers: int, need: Any, path: str) -> dict[str, Any]:
    """DeepSeek-V4's config.json as transformers 5.25 writes it (`layer_types`, `compress_rates`,
    `mlp_layer_types`, `rope_parameters` with `main` and `compress`); every layer a routed MoE with shared experts
    and sqrt-softplus scores."""
    kinds = list(need("layer_types"))
    bad = [k for k in kinds if k not in V4_KINDS]
    if len(kinds) != layers or bad:
        raise ValueError(f"{path}: field 'layer_types': {layers} of {', '.join(V4_KINDS)} expected, got {kinds}")
    mlp = list(raw.get("mlp_layer_types") or ["hash_moe"] * min(layers, 3) + ["moe"] * max(0, layers - 3))
    if len(mlp) != layers or set(mlp) - {"hash_moe", "moe"}:
        raise ValueError(f"{path}: field 'mlp_layer_types': {layers} of hash_moe, moe expected, got {mlp}")
    if raw.get("scoring_func", "sqrtsoftplus") != "sqrtsoftplus" or int(raw.get("num_key_value_heads") or 1) != 1:
        raise ValueError(f"{path}: fields 'scoring_func'/'num_key_value_heads': only DeepSeek-V4's sqrtsoftplus "
                         "router over one shared K=V head is supported")
    rates = raw.get("compress_rates") or {}
    rope = (raw.get("rope_parameters") or {}).get("compress") or {}
    dim = int(need("head_dim"))
    shape = CompressedShape(
        tuple(V4_KINDS[k] for k in kinds), dim, int(raw.get("qk_rope_head_dim") or dim // 8),
        int(need("q_lora_rank")), int(need("sliding_window")), int(rates.get("compressed_sparse_attention", 4)),
        int(rates.get("heavily_compressed_attention", 128)), int(need("index_n_heads")), int(need("index_head_dim")),
        int(need("index_topk")), int(need("o_groups")), int(need("o_lora_rank")), int(raw.get("hc_mult", 4)),
        int(raw.get("hc_sinkhorn_iters", 20)), float(raw.get("hc_eps", 1e-6)),
        float(rope.get("rope_theta", raw.get("compress_rope_theta", 160000.0))),
        tuple(sorted((k, v) for k, v in rope.items() if k not in ("rope_theta", "partial_rotary_factor"))),
        tuple(m == "hash_moe" for m in mlp), float(raw.get("swiglu_limit", 10.0)))
    experts = int(raw.get("n_routed_experts") or need("n_routed_experts"))
    return {"v4": shape, "num_experts": experts, "experts_per_token": int(need("num_experts_per_tok")),
            "moe_intermediate_size": int(need("moe_intermediate_size")), "norm_topk_prob": True,
            "routing": GroupedRouting(1, 1, float(raw.get("routed_scaling_factor", 1.5)),
                                      int(raw.get("n_shared_experts") or 0), sigmoid=False),
            "moe_layers": (True,) * layers, "fp8_block": _fp8_block(raw, path)}
