"""The Llama family in plain PyTorch: Llama 3.x, Qwen2.5, Qwen3, Mistral, and Qwen3-MoE (one module, a few
flags; a MoE config swaps the MLP of its sparse layers for routed experts, `model/moe.py`).

Parameter names follow the Hugging Face checkpoints, so safetensors load without renaming. The model works on
a flattened batch (prefill chunks and decode tokens of many sequences side by side) over paged KV: attention
goes through an `AttentionBackend`, which writes the new K/V into the cache and reads each sequence's context.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from agentkv.kernels.attention import AttentionBackend, AttentionMetadata, LayerKV
from agentkv.model.config import ModelConfig
from agentkv.model.moe import GatedMLP, SparseMoE


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_inv_freq(head_dim: int, theta: float, rs: dict) -> torch.Tensor:
    """Inverse frequencies, with Llama 3's long-context scaling (low frequencies stretched by `factor`, high
    ones kept, a smooth blend between) or linear position scaling where the config asks for it."""
    d = head_dim
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    if rs.get("rope_type") == "linear":
        return (inv / float(rs["factor"])).float()
    if rs.get("rope_type") == "yarn":
        return yarn_inv_freq(inv, d, theta, rs)
    if rs.get("rope_type") == "llama3":
        factor, lo, hi = float(rs["factor"]), float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old = float(rs["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > old / lo, inv / factor, inv)
        smooth = (old / wavelen - lo) / (hi - lo)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / hi) & (wavelen <= old / lo)
        inv = torch.where(medium, blended, scaled)
    return inv.float()


def yarn_inv_freq(inv: torch.Tensor, d: int, theta: float, rs: dict) -> torch.Tensor:
    """YaRN: frequencies that turn fewer than `beta_slow` times over the original context are interpolated
    (divided by `factor`), those turning more than `beta_fast` times kept, a linear ramp between."""
    factor, old = float(rs["factor"]), float(rs["original_max_position_embeddings"])

    def dim_of(turns: float) -> float:
        return d * math.log(old / (turns * 2 * math.pi)) / (2 * math.log(theta))

    lo, hi = dim_of(float(rs.get("beta_fast") or 32)), dim_of(float(rs.get("beta_slow") or 1))
    if rs.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, d - 1)
    ramp = ((torch.arange(d // 2, dtype=torch.float64) - lo) / ((hi - lo) or 0.001)).clamp(0, 1)
    return (inv / factor * ramp + inv * (1 - ramp)).float()


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction, 0.1 mscale ln(factor) + 1 (1 where nothing is stretched)."""
    return 0.1 * mscale * math.log(factor) + 1.0 if factor > 1 else 1.0


def rope_attention_factor(rs: dict) -> float:
    """YaRN scales cos and sin by this: the config's `attention_factor`, else mscale(factor) over
    mscale(mscale_all_dim) where both are given (DeepSeek's), else mscale(factor); 1 for the other RoPEs."""
    if rs.get("rope_type") != "yarn":
        return 1.0
    factor = float(rs["factor"])
    if rs.get("attention_factor"):
        return float(rs["attention_factor"])
    if rs.get("mscale") and rs.get("mscale_all_dim"):
        return yarn_mscale(factor, float(rs["mscale"])) / yarn_mscale(factor, float(rs["mscale_all_dim"]))
    return yarn_mscale(factor)


class Rotary(nn.Module):
    def __init__(self, head_dim: int, theta: float, scaling: dict, interleaved: bool = False) -> None:
        super().__init__()
        self.head_dim, self.theta, self.scaling, self.interleaved = head_dim, theta, scaling, interleaved
        self.gain = rope_attention_factor(scaling)
        self.register_buffer("inv_freq", rope_inv_freq(head_dim, theta, scaling), persistent=False)

    @staticmethod
    def of(cfg: ModelConfig) -> Rotary:
        return Rotary(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.interleaved_rope)

    def materialise(self, device: str | torch.device) -> None:
        """Fill the frequencies on `device` (a model built on the meta device has none)."""
        self.to_empty(device=device)
        self.inv_freq.copy_(rope_inv_freq(self.head_dim, self.theta, self.scaling).to(device))

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: [T, heads, head_dim] rotated by each token's position: dims i and i + d/2 as a pair (the half-split
        layout HF uses for most families) or dims 2i and 2i + 1 (interleaved, Llama 4)."""
        freqs = positions[:, None].float() * self.inv_freq[None, :]
        cos, sin = freqs.cos()[:, None, :] * self.gain, freqs.sin()[:, None, :] * self.gain
        if self.interleaved:
            x1, x2 = x.float()[..., 0::2], x.float()[..., 1::2]
            return torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2).to(x.dtype)
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class Attention(nn.Module):
    """Grouped-query attention over paged KV. Per layer: its window (0: full), a sink logit per head where
    the config has them; per family: biases, RMSNorm on q and k (of `norm`'s kind), the query scale."""

    def __init__(self, cfg: ModelConfig, backend: AttentionBackend, layer: int = 0,
                 norm: type[nn.Module] = RMSNorm) -> None:
        super().__init__()
        self.h, self.kvh, self.d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.h * self.d, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.kvh * self.d, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.kvh * self.d, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(self.h * self.d, cfg.hidden_size, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = norm(self.d, cfg.rms_norm_eps)
            self.k_norm = norm(self.d, cfg.rms_norm_eps)
        self.sinks = nn.Parameter(torch.zeros(self.h)) if cfg.attention_sinks else None
        self.qk_norm = cfg.qk_norm
        self.backend = backend
        self.window, self.chunk = (0, cfg.window_of(layer)) if cfg.chunked else (cfg.window_of(layer), 0)
        self.rotated = not cfg.rope_layers or cfg.rope_layers[layer]
        self.scale = cfg.query_scale or self.d**-0.5

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rotary: Rotary, kv: LayerKV,
                meta: AttentionMetadata) -> torch.Tensor:
        q = self.q_proj(x).view(-1, self.h, self.d)
        k = self.k_proj(x).view(-1, self.kvh, self.d)
        v = self.v_proj(x).view(-1, self.kvh, self.d)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotated:
            q, k = rotary(q, positions), rotary(k, positions)
        q, k = self.after_rope(q, k, positions)
        out = self.backend.forward(q, k, v, kv, meta, self.scale, self.window, self.sinks, self.chunk)
        return self.o_proj(out.reshape(-1, self.h * self.d))

    def after_rope(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What a family does to q and k after RoPE (Llama 4: an L2 norm, a NoPE query scale): nothing here."""
        return q, k


def feed_forward(cfg: ModelConfig, layer: int) -> nn.Module:
    """The layer's MLP: routed experts on a MoE config's sparse layers, the dense gated MLP elsewhere."""
    if cfg.is_moe_layer(layer):
        return SparseMoE(cfg)
    return GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.activation)


class DecoderLayer(nn.Module):
    """A pre-norm residual block; a family that changes only its attention or MLP overrides `make_attention` /
    `make_mlp` (the module names stay the checkpoints' own)."""

    def __init__(self, cfg: ModelConfig, backend: AttentionBackend, layer: int) -> None:
        super().__init__()
        self.self_attn = self.make_attention(cfg, backend, layer)
        self.mlp = self.make_mlp(cfg, layer)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def make_attention(self, cfg: ModelConfig, backend: AttentionBackend, layer: int) -> nn.Module:
        return Attention(cfg, backend, layer)

    def make_mlp(self, cfg: ModelConfig, layer: int) -> nn.Module:
        return feed_forward(cfg, layer)

    def forward(self, x, positions, rotary, kv, meta):
        x = x + self.self_attn(self.input_layernorm(x), positions, rotary, kv, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: AttentionBackend, layer: type[nn.Module] = DecoderLayer) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(layer(cfg, backend, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary.of(cfg)


class LlamaForCausalLM(nn.Module):
    """The model every family shares: embeddings, decoder layers (`layer`, the family's), a final norm, the LM
    head. A family overrides what differs: its layer, `embed`, which RoPE a layer takes."""

    layer: type[nn.Module] = DecoderLayer

    def __init__(self, cfg: ModelConfig, backend: AttentionBackend) -> None:
        super().__init__()
        self.config = cfg
        self.model = self.backbone(cfg, backend)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor,
                kv_caches: list[LayerKV], meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states [T, hidden] of a flattened batch; K/V of its tokens are written into `kv_caches`."""
        m = self.model
        x = self.embed(input_ids)
        for layer, kv in zip(m.layers, kv_caches, strict=True):
            x = layer(x, positions, self.rotary_of(layer), kv, meta)
        return m.norm(x)

    def backbone(self, cfg: ModelConfig, backend: AttentionBackend) -> nn.Module:
        return Backbone(cfg, backend, self.layer)

    def skips(self, tensor: str) -> bool:
        """Whether a checkpoint tensor is published beside the model but not run by it (none here)."""
        return False

    def dtype_of(self, tensor: str, dtype: torch.dtype) -> torch.dtype:
        """The dtype a checkpoint tensor loads in: the model's, unless the family keeps it wider."""
        return dtype

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def rotary_of(self, layer: nn.Module) -> Rotary:
        return self.model.rotary

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.lm_head(hidden).float()
        cap = self.config.logit_softcap  # cap * tanh(logits / cap) where the family softcaps (0: none)
        return torch.tanh(out / cap) * cap if cap else out
