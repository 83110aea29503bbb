"""DeepSeek-V3 (`DeepseekV3ForCausalLM`) in plain PyTorch: multi-head latent attention (MLA) over pages that
hold the latent, and MoE layers with shared experts and grouped top-k routing.

MLA, as transformers' DeepseekV3Attention computes it: per token one latent c = norm(W_DKV x) of kv_lora_rank
values and one RoPE key k_pe of qk_rope_head_dim shared by all heads; head h's key is [W_UK,h c ; k_pe] and
its value W_UV,h c. The pages keep only [c ; k_pe] (`engine/pages.py`'s MLA layout), what
`kvcache/sizing.py` prices. Two ways to attend over them, equal in exact arithmetic:
- unabsorbed (prefill chunks): expand the context's latents into per-head keys and values, then attend with
  the full query, as vLLM's and SGLang's MLA prefill does (fewer FLOPs per pair when many queries share it);
- absorbed (decodes): fold W_UK into the query (q_h W_UK,h: kv_lora_rank values) so every head attends the
  same [c ; k_pe] as one multi-query head, through the engine's attention backend (the Triton kernels on
  CUDA), and apply W_UV to the output; the context is read once, never expanded.
The softmax scale is qk_head_dim^-0.5, times YaRN's mscale(factor, mscale_all_dim)^2 where the config has
it. RoPE pairs adjacent dims where `rope_interleave` is set (the published checkpoints' layout).

The router (`DeepseekV3MoE.route`): sigmoid scores of an fp32 linear layer; a bias per expert
(`e_score_correction_bias`) steers the choice, not the weights; experts fall in n_group groups, each scored by
its two best biased scores; a token keeps the topk_group best groups and its top k experts inside them; the
chosen (unbiased) scores are renormalised (norm_topk_prob), then scaled by routed_scaling_factor. The first
`first_k_dense_replace` layers have a dense MLP; the others add n_shared_experts dense experts to the routed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agentkv.kernels.attention import AttentionBackend, AttentionMetadata, LayerKV
from agentkv.model.config import ModelConfig
from agentkv.model.llama import DecoderLayer, LlamaForCausalLM, RMSNorm, Rotary, yarn_mscale
from agentkv.model.moe import GatedMLP, SparseMoE

BUDGET = 1 << 22  # elements of one context piece's scores or expanded keys and values (16 MiB in fp32)
LOW_RANK_NORM_EPS = 1e-6  # the q_a and kv_a norms use RMSNorm's default eps in every reference, not the config's


class MLAAttention(nn.Module):
    """Multi-head latent attention over pages of [latent ; RoPE key]: prefill rows unabsorbed, decode rows
    absorbed (the module docstring says how and why)."""

    def __init__(self, cfg: ModelConfig, backend: AttentionBackend) -> None:
        super().__init__()
        m, hidden, bias = cfg.mla, cfg.hidden_size, cfg.qkv_bias
        assert m is not None
        self.m, self.h = m, cfg.num_heads
        if m.q_lora_rank:
            self.q_a_proj = nn.Linear(hidden, m.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(m.q_lora_rank, LOW_RANK_NORM_EPS)
            self.q_b_proj = nn.Linear(m.q_lora_rank, self.h * m.qk_head_dim, bias=False)
        else:
            self.q_proj = nn.Linear(hidden, self.h * m.qk_head_dim, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(hidden, m.entry_dim, bias=bias)
        self.kv_a_layernorm = RMSNorm(m.kv_lora_rank, LOW_RANK_NORM_EPS)
        self.kv_b_proj = nn.Linear(m.kv_lora_rank, self.h * (m.qk_nope_head_dim + m.v_head_dim), bias=False)
        self.o_proj = nn.Linear(self.h * m.v_head_dim, hidden, bias=bias)
        self.backend = backend
        rs = cfg.rope_scaling
        gain = yarn_mscale(float(rs["factor"]), float(rs["mscale_all_dim"])) \
            if rs.get("rope_type") == "yarn" and rs.get("mscale_all_dim") else 1.0
        self.scale = m.qk_head_dim**-0.5 * gain * gain
        self.absorb_prefill = False  # True: prefill chunks take the absorbed path too (the tests compare both)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rotary: Rotary, kv: LayerKV,
                meta: AttentionMetadata) -> torch.Tensor:
        m = self.m
        q = (self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))) if m.q_lora_rank else self.q_proj(x))
        q_nope, q_pe = q.view(-1, self.h, m.qk_head_dim).split([m.qk_nope_head_dim, m.qk_rope_head_dim], dim=-1)
        latent, k_pe = self.kv_a_proj_with_mqa(x).split([m.kv_lora_rank, m.qk_rope_head_dim], dim=-1)
        entry = torch.cat([self.kv_a_layernorm(latent), rotary(k_pe[:, None], positions)[:, 0]], dim=-1)[:, None]
        q_pe = rotary(q_pe, positions)
        # kv-eval's backend brings metadata of its own, without prefill rows: every row absorbed there
        unabsorbed = isinstance(meta, AttentionMetadata) and not self.absorb_prefill
        split = meta.query_start_loc_host[meta.num_prefills] if unabsorbed else 0
        out = x.new_empty(x.shape[0], self.h, m.v_head_dim)
        if split:
            kv.codec.encode_into(kv.k, meta.slot_mapping[:split], entry[:split])
            out[:split] = self._unabsorbed(q_nope[:split], q_pe[:split], kv, meta)
        if split < x.shape[0]:
            rest = decodes_of(meta) if split else meta
            out[split:] = self._absorbed(q_nope[split:], q_pe[split:], entry[split:], kv, rest)
        return self.o_proj(out.view(-1, self.h * m.v_head_dim))

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """W_UK [heads, qk_nope, latent] and W_UV [heads, v, latent], views of kv_b_proj."""
        w = self.kv_b_proj.weight.view(self.h, self.m.qk_nope_head_dim + self.m.v_head_dim, self.m.kv_lora_rank)
        return w[:, : self.m.qk_nope_head_dim], w[:, self.m.qk_nope_head_dim :]

    def _absorbed(self, q_nope: torch.Tensor, q_pe: torch.Tensor, entry: torch.Tensor, kv: LayerKV,
                  meta: AttentionMetadata) -> torch.Tensor:
        """Every head attends the pages' [c ; k_pe] as one shared key (and c as the value: the backend's value
        is the same page, whose RoPE part of the output is dropped)."""
        w_uk, w_uv = self._weights()
        q = torch.cat([torch.einsum("thn,hnl->thl", q_nope, w_uk), q_pe], dim=-1)
        o = self.backend.forward(q, entry, entry, kv, meta, self.scale)
        return torch.einsum("thl,hvl->thv", o[..., : self.m.kv_lora_rank], w_uv)

    def _unabsorbed(self, q_nope: torch.Tensor, q_pe: torch.Tensor, kv: LayerKV,
                    meta: AttentionMetadata) -> torch.Tensor:
        """Each prefill chunk over its context, read back from its pages and expanded per head."""
        q = torch.cat([q_nope, q_pe], dim=-1)
        out = q.new_empty(q.shape[0], self.h, self.m.v_head_dim)
        qsl = meta.query_start_loc_host
        for i in range(meta.num_prefills):
            a, b = qsl[i], qsl[i + 1]
            out[a:b] = self._over_context(q[a:b], kv, meta.block_tables[i], meta.seq_lens_host[i])
        return out

    def _over_context(self, q: torch.Tensor, kv: LayerKV, table: torch.Tensor, n: int) -> torch.Tensor:
        """Queries q [L, heads, qk_head_dim] at the last L of n positions, causally over the context's keys and
        values expanded a few pages at a time, under an online softmax (running max and sum): memory stays
        within BUDGET elements a piece, whatever the context. The RoPE key, shared by all heads, is never
        expanded."""
        m, bs, L = self.m, kv.block_size, q.shape[0]
        step = max(1, BUDGET // (bs * self.h * max(L, m.qk_nope_head_dim + m.v_head_dim)))  # pages a piece
        qf = q.float() * self.scale
        q_nope, q_pe = qf.split([m.qk_nope_head_dim, m.qk_rope_head_dim], dim=-1)
        qpos = torch.arange(n - L, n, device=q.device)
        top = torch.full((self.h, L), float("-inf"), device=q.device)
        total = torch.zeros(self.h, L, device=q.device)
        acc = torch.zeros(self.h, L, m.v_head_dim, device=q.device)
        for j in range(0, -(-n // bs), step):  # the first piece holds key 0, which every query sees
            ctx = kv.codec.decode(kv.k, table[j : j + step].long(), q.dtype).reshape(-1, m.entry_dim)
            latent, k_pe = ctx.split([m.kv_lora_rank, m.qk_rope_head_dim], dim=-1)
            k_nope, v = self.kv_b_proj(latent).float().view(ctx.shape[0], self.h, -1).split(
                [m.qk_nope_head_dim, m.v_head_dim], dim=-1)
            s = torch.einsum("lhd,thd->hlt", q_nope, k_nope) + torch.einsum("lhr,tr->hlt", q_pe, k_pe.float())
            kpos = j * bs + torch.arange(ctx.shape[0], device=q.device)
            s = s.masked_fill(kpos[None, None, :] > qpos[None, :, None], float("-inf"))
            new_top = torch.maximum(top, s.amax(-1))
            prob, fade = torch.exp(s - new_top[..., None]), torch.exp(top - new_top)
            total = total * fade + prob.sum(-1)
            acc = acc * fade[..., None] + torch.einsum("hlt,thv->hlv", prob, v)
            top = new_top
        return (acc / total[..., None]).transpose(0, 1).to(q.dtype)


def decodes_of(meta: AttentionMetadata) -> AttentionMetadata:
    """The step's metadata for its decode rows alone (the rows after the prefill chunks)."""
    p, a = meta.num_prefills, meta.query_start_loc_host[meta.num_prefills]
    return AttentionMetadata(meta.slot_mapping[a:], meta.query_start_loc[p:] - a, meta.seq_lens[p:],
                             meta.block_tables[p:], 0, 1, meta.max_seq_len,
                             [q - a for q in meta.query_start_loc_host[p:]], meta.seq_lens_host[p:])


class DeepseekV3MoE(SparseMoE):
    """The shared routed-experts block (`model/moe.py`) with DeepSeek's grouped router (V3's sigmoid, V2's
    softmax: `GroupedRouting`) and its shared experts."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        assert cfg.routing is not None
        self.routing = cfg.routing
        if cfg.routing.sigmoid:  # V3's bias, which steers the choice (V2 has none)
            self.gate.register_buffer("e_score_correction_bias", torch.zeros(cfg.num_experts))
        self.shared_experts = GatedMLP(cfg.hidden_size, cfg.moe_intermediate_size * cfg.routing.shared)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r, n = self.routing, self.gate.weight.shape[0]
        logits = F.linear(x.float(), self.gate.weight.float())
        scores = logits.sigmoid() if r.sigmoid else logits.softmax(dim=-1)
        biased = scores + self.gate.e_score_correction_bias.float() if r.sigmoid else scores
        per_group = biased.view(-1, r.groups, n // r.groups)
        group_score = per_group.topk(2, dim=-1)[0].sum(-1) if r.sigmoid else per_group.amax(-1)
        kept = torch.zeros_like(group_score).scatter_(1, group_score.topk(r.topk_groups, dim=-1)[1], 1.0).bool()
        biased = biased.masked_fill(~kept.repeat_interleave(n // r.groups, dim=1), float("-inf"))
        chosen = biased.topk(self.top_k, dim=-1)[1]
        weights = scores.gather(1, chosen)
        if self.renormalise:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return chosen, (weights * r.scaling).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.shared_experts(x)


class DeepseekV3Layer(DecoderLayer):
    def make_attention(self, cfg: ModelConfig, backend: AttentionBackend, layer: int) -> nn.Module:
        return MLAAttention(cfg, backend)

    def make_mlp(self, cfg: ModelConfig, layer: int) -> nn.Module:
        return DeepseekV3MoE(cfg) if cfg.is_moe_layer(layer) else \
            GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.activation)


class DeepseekV3ForCausalLM(LlamaForCausalLM):
    """The Llama backbone and head with MLA + grouped-MoE layers; its RoPE is the config's YaRN over the
    qk_rope_head_dim dims (`ModelConfig.head_dim` for this family). DeepSeek-V2 (`DeepseekV2ForCausalLM`) is
    the same model with V2's softmax router."""

    layer = DeepseekV3Layer

    def dtype_of(self, tensor: str, dtype: torch.dtype) -> torch.dtype:
        """The router's weight and bias stay fp32 whatever the model's dtype, as transformers and vLLM keep them:
        in bf16 the bias (which only ranks experts) would round choices apart from the reference's."""
        return torch.float32 if tensor.endswith(("mlp.gate.weight", "mlp.gate.e_score_correction_bias")) else dtype

    def skips(self, tensor: str) -> bool:
        """The multi-token-prediction layers published after the last layer (`model.layers.61.*` in DeepSeek-V3,
        `num_nextn_predict_layers`): a draft head for speculative decoding, not part of the forward pass."""
        parts = tensor.split(".")
        return tensor.startswith("model.layers.") and int(parts[2]) >= self.config.num_layers
