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
