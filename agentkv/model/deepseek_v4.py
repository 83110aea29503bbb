"""DeepSeek-V4 (`DeepseekV4ForCausalLM`) in plain PyTorch, over paged KV like the other families.

As transformers 5.25's model computes it (the semantics were read there; the parameter names are the published
checkpoint's, which transformers writes back):
- attention: one shared K=V head of `dim` values per token (normed, RoPE on its last `rope_dim` dims, adjacent
  pairs), low-rank queries RMS-normed per head, a sink logit per head, softmax scale dim^-0.5. Every layer sees
  its last `window` raw tokens; a compressed layer also sees compressed entries (`model/v4_attention.py`'s
  `Compressor`, `Indexer`, `V4Attention`): an HCA layer
  every entry whose window has closed, a CSA layer only the `index_topk` a lightning indexer picks per query.
  The output is rotated back by the query's position (so each entry counts by relative distance) and projected
  by a grouped low-rank projection (`o_groups` blocks to `o_lora_rank` each, then one linear);
- residual: `hc_mult` streams (mHC): before each block a learned mix collapses them into its input, after it the
  output is spread back and the streams mixed by a Sinkhorn-normalised matrix;
- MoE on every layer: sqrt(softplus) scores, top k by bias-corrected score (or, on the first hash layers, the
  experts a fixed token-id table names), weights renormalised and scaled; SwiGLU experts clamped to
  `swiglu_limit`, plus shared experts.
Over pages (docs/ARCHITECTURE.md, "DeepSeek-V4 in the engine"): every layer's raw keys in the sliding page group,
the compressed entries (and CSA indexer keys, fp4) in the pool's pages, each compressor's unfinished window in a
tail per running sequence; the attention over them is `kernels/compressed_attention.py`'s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agentkv.kernels.attention import AttentionBackend, AttentionMetadata
from agentkv.kernels.compressed_attention import V4LayerKV
from agentkv.model.config import ModelConfig
from agentkv.model.deepseek_config import CompressedShape
from agentkv.model.llama import RMSNorm, Rotary
from agentkv.model.moe import dispatch
from agentkv.model.v4_attention import V4Attention, unit_rms

FP32_PARTS = ("hc_", "attn_sink", ".ape", "gate.bias", "compressor.wkv", "compressor.wgate", "weights_proj")
# ^ kept in fp32 as transformers keeps them (`_keep_in_fp32_modules`); the norms' weights load in the model's dtype


class ClampedExpert(nn.Module):
    """w2(silu(min(w1 x, limit)) * clamp(w3 x, +-limit)): V4's routed and shared experts."""

    def __init__(self, hidden: int, intermediate: int, limit: float) -> None:
        super().__init__()
        self.w1 = nn.Linear(hidden, intermediate, bias=False)
        self.w2 = nn.Linear(intermediate, hidden, bias=False)
        self.w3 = nn.Linear(hidden, intermediate, bias=False)
        self.limit = limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x).clamp(max=self.limit)) * self.w3(x).clamp(-self.limit, self.limit))


class Gate(nn.Module):
    """sqrt(softplus) expert scores; the choice is the top k of score + bias, or a token-id table (hash layers)."""

    def __init__(self, cfg: ModelConfig, hashed: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, cfg.hidden_size))
        self.top_k, self.hashed = cfg.experts_per_token, hashed
        assert cfg.routing is not None
        self.scaling = cfg.routing.scaling
        if hashed:
            self.register_buffer("tid2eid", torch.empty(cfg.vocab_size, self.top_k, dtype=torch.long))
        else:
            self.bias = nn.Parameter(torch.empty(cfg.num_experts))

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = F.softplus(F.linear(x, self.weight)).sqrt()
        chosen = self.tid2eid[input_ids] if self.hashed else \
            torch.topk(scores + self.bias, self.top_k, dim=-1, sorted=False).indices
        weights = scores.gather(1, chosen)
        return chosen, weights / (weights.sum(-1, keepdim=True) + 1e-20) * self.scaling


class V4MoE(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        v4, routing = cfg.v4, cfg.routing
        assert v4 is not None and routing is not None
        self.gate = Gate(cfg, v4.hash_layers[layer])
        size, limit = cfg.moe_intermediate_size, v4.swiglu_limit
        self.experts = nn.ModuleList(ClampedExpert(cfg.hidden_size, size, limit) for _ in range(cfg.num_experts))
        self.shared_experts = ClampedExpert(cfg.hidden_size, size, limit)  # one, as transformers builds it

    def forward(self, x: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        chosen, weights = self.gate(x, input_ids)
        routed = dispatch(x, chosen, weights.to(x.dtype), lambda e, rows, w: self.experts[e](rows) * w)
        return routed + self.shared_experts(x)


def hyper_mix(streams: torch.Tensor, fn: torch.Tensor, base: torch.Tensor, scale: torch.Tensor, v4: CompressedShape,
              eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """mHC's weights from the streams [T, n, hidden]: the block's input (the streams collapsed), how its output
    spreads back (post [T, n]) and how the streams mix (comb [T, n, n], rows and columns Sinkhorn-normalised)."""
    n, hc_eps = v4.hc_mult, v4.hc_eps
    mixes = F.linear(unit_rms(streams.flatten(1).float(), eps), fn.float())
    pre, post, comb = mixes.split([n, n, n * n], dim=-1)
    pre = torch.sigmoid(pre * scale[0] + base[:n]) + hc_eps
    post = 2 * torch.sigmoid(post * scale[1] + base[n : 2 * n])
    comb = torch.softmax(comb.view(-1, n, n) * scale[2] + base[2 * n :].view(n, n), dim=-1) + hc_eps
    comb = comb / (comb.sum(dim=-2, keepdim=True) + hc_eps)
    for _ in range(v4.hc_iters - 1):
        comb = comb / (comb.sum(dim=-1, keepdim=True) + hc_eps)
        comb = comb / (comb.sum(dim=-2, keepdim=True) + hc_eps)
    return (pre[..., None] * streams).sum(dim=1).to(streams.dtype), post, comb


class V4Layer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        assert cfg.v4 is not None
        self.v4, self.eps = cfg.v4, cfg.rms_norm_eps
        self.attn = V4Attention(cfg, layer)
        self.ffn = V4MoE(cfg, layer)
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        n, wide = cfg.v4.hc_mult, cfg.v4.hc_mult * cfg.hidden_size
        for block in ("attn", "ffn"):
            self.register_parameter(f"hc_{block}_fn", nn.Parameter(torch.empty((2 + n) * n, wide)))
            self.register_parameter(f"hc_{block}_base", nn.Parameter(torch.empty((2 + n) * n)))
            self.register_parameter(f"hc_{block}_scale", nn.Parameter(torch.empty(3)))

    def forward(self, streams: torch.Tensor, input_ids: torch.Tensor, positions: torch.Tensor, rotary: Rotary,
                kv: V4LayerKV, meta: AttentionMetadata) -> torch.Tensor:
        streams = self.block(streams, "attn", lambda x: self.attn(self.attn_norm(x), positions, rotary, kv, meta))
        return self.block(streams, "ffn", lambda x: self.ffn(self.ffn_norm(x), input_ids))

    def block(self, streams: torch.Tensor, name: str, run) -> torch.Tensor:
        """One block under mHC: collapse the streams into its input, spread its output back, mix the streams."""
        params = (getattr(self, f"hc_{name}_{p}") for p in ("fn", "base", "scale"))
        collapsed, post, comb = hyper_mix(streams, *params, self.v4, self.eps)
        dtype = streams.dtype
        return post.to(dtype)[..., None] * run(collapsed)[:, None] + comb.to(dtype).transpose(-1, -2) @ streams


class HyperHead(nn.Module):
    """The last collapse of the streams into one hidden state, before the final norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        assert cfg.v4 is not None
        n, self.eps, self.hc_eps = cfg.v4.hc_mult, cfg.rms_norm_eps, cfg.v4.hc_eps
        self.hc_fn = nn.Parameter(torch.empty(n, n * cfg.hidden_size))
        self.hc_base = nn.Parameter(torch.empty(n))
        self.hc_scale = nn.Parameter(torch.empty(1))

    def forward(self, streams: torch.Tensor) -> torch.Tensor:
        mixes = F.linear(unit_rms(streams.flatten(1).float(), self.eps), self.hc_fn.float())
        pre = torch.sigmoid(mixes * self.hc_scale.float() + self.hc_base.float()) + self.hc_eps
        return (pre[..., None] * streams).sum(dim=1).to(streams.dtype)


class V4Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        v4 = cfg.v4
        assert v4 is not None
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(V4Layer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hc_head = HyperHead(cfg)
        self.rotary = Rotary(v4.rope_dim, cfg.rope_theta, {"rope_type": "default"}, interleaved=True)
        compress = dict(v4.compress_rope) or {"rope_type": "default"}
        if compress.get("rope_type") == "yarn":
            compress.setdefault("attention_factor", 1.0)  # as transformers sets it for V4's compressed RoPE
        self.compress_rotary = Rotary(v4.rope_dim, v4.compress_theta, compress, interleaved=True)


class DeepseekV4ForCausalLM(nn.Module):
    """The backbone and the LM head (`head`, as published), over a flattened batch of paged sequences."""

    def __init__(self, cfg: ModelConfig, backend: AttentionBackend | None = None) -> None:
        super().__init__()
        self.config = cfg
        self.model = V4Backbone(cfg)
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv_caches: list[V4LayerKV],
                meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states [T, hidden]; each layer's raw keys, closed windows' entries and compressor tails are
        written into `kv_caches` (engine/compressed.py builds them)."""
        m, v4 = self.model, self.config.v4
        assert v4 is not None
        streams = m.embed_tokens(input_ids)[:, None].expand(-1, v4.hc_mult, -1).contiguous()
        for i, (layer, kv) in enumerate(zip(m.layers, kv_caches, strict=True)):
            rotary = m.rotary if v4.kinds[i] == "sliding" else m.compress_rotary
            streams = layer(streams, input_ids, positions, rotary, kv, meta)
        return m.norm(m.hc_head(streams))

    @torch.no_grad()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden).float()

    def skips(self, tensor: str) -> bool:
        """The multi-token-prediction layer is published beside the model but not run (as transformers)."""
        return tensor.startswith("mtp.") or ".mtp." in tensor

    def dtype_of(self, tensor: str, dtype: torch.dtype) -> torch.dtype:
        if tensor.endswith("tid2eid"):
            return torch.long
        return torch.float32 if any(p in tensor for p in FP32_PARTS) else dtype
