"""DeepSeek-V4 (`DeepseekV4ForCausalLM`) in plain PyTorch, over paged KV like the other families.

As transformers 5.25's model computes it (the semantics were read there; the parameter names are the published
checkpoint's, which transformers writes back):
- attention: one shared K=V head of `dim` values per token (normed, RoPE on its last `rope_dim` dims, adjacent
  pairs), low-rank queries RMS-normed per head, a sink logit per head, softmax scale dim^-0.5. Every layer sees
  its last `window` raw tokens; a compressed layer also sees compressed entries (`Compressor`): an HCA layer
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
tail per running sequence; attention is `kernels/compressed_attention.py`'s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agentkv.kernels.attention import AttentionBackend, AttentionMetadata
from agentkv.kernels.compressed_attention import Tail, V4LayerKV, attend, read_window, spans
from agentkv.model.config import ModelConfig
from agentkv.model.deepseek_config import CompressedShape
from agentkv.model.llama import RMSNorm, Rotary
from agentkv.model.moe import dispatch

BUDGET = 1 << 22  # elements of one piece of queries' scores (heads x queries x keys: 16 MiB in fp32)
FP32_PARTS = ("hc_", "attn_sink", ".ape", "gate.bias", "compressor.wkv", "compressor.wgate", "weights_proj")
# ^ kept in fp32 as transformers keeps them (`_keep_in_fp32_modules`); the norms' weights load in the model's dtype


def unit_rms(x: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm without a weight (the per-head query norm, mHC's input norm)."""
    return x * torch.rsqrt(x.float().square().mean(-1, keepdim=True) + eps).to(x.dtype)


def rotate(rotary: Rotary, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """RoPE on the last `rotary.head_dim` dims of x [T, heads, dim], the rest as is."""
    d = rotary.head_dim
    return torch.cat([x[..., :-d], rotary(x[..., -d:], positions)], dim=-1)


class Compressor(nn.Module):
    """One compressed entry per `ratio` tokens: a softmax-gated pool (gate + a learned bias per slot) of the window's
    projections, normed and rotated at the window's first position. `overlap` (CSA): each token projects twice,
    and entry w pools window w-1's first half with window w's second (width 2 x ratio, stride ratio).

    Over pages, a window closes in a later step than most of its tokens ran in: their projections wait in the
    sequence's tail (`Tail`), and an entry is written to the pool's pages when its window closes."""

    def __init__(self, hidden: int, dim: int, ratio: int, overlap: bool, eps: float) -> None:
        super().__init__()
        width = 2 * dim if overlap else dim
        self.dim, self.ratio, self.overlap = dim, ratio, overlap
        self.wkv = nn.Linear(hidden, width, bias=False)
        self.wgate = nn.Linear(hidden, width, bias=False)
        self.ape = nn.Parameter(torch.empty(ratio, width))
        self.norm = RMSNorm(dim, eps)

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.wkv.weight.dtype)
        return self.wkv(x), self.wgate(x)

    def pool(self, kv: torch.Tensor, gate: torch.Tensor, first: int, lead: bool, rotary: Rotary) -> torch.Tensor:
        """Entries [n, dim] of consecutive windows first.. from their projections kv, gate [n, m, width]; with
        `lead` (CSA past window 0) one more window comes first, read only as the next one's overlap."""
        n, m, d = kv.shape[0], self.ratio, self.dim
        gate = gate + self.ape
        if self.overlap:
            first_kv, first_gate = kv.new_zeros(n, m, d), gate.new_full((n, m, d), float("-inf"))
            first_kv[1:], first_gate[1:] = kv[:-1, :, :d], gate[:-1, :, :d]
            kv, gate = torch.cat([first_kv, kv[..., d:]], dim=1), torch.cat([first_gate, gate[..., d:]], dim=1)
        pooled = self.norm((kv * gate.softmax(dim=1, dtype=torch.float32).to(kv.dtype)).sum(dim=1))[int(lead):]
        where = (first + torch.arange(pooled.shape[0], device=kv.device)) * m
        return rotate(rotary, pooled[:, None], where)[:, 0].to(self.norm.weight.dtype)

    def close(self, kv: torch.Tensor, gate: torch.Tensor, tail: Tail, row: int, start: int, end: int,
              valid_from: int, rotary: Rotary) -> tuple[int, torch.Tensor | None]:
        """One sequence's new projections kv, gate [end - start, width] at positions start..end-1: the entries of
        the windows they close (the first window's index and [n, dim], or None), its tail kept up to date.
        A window needing positions before `valid_from` is not rebuilt: its entry is in the hit's pages."""
        m, span = self.ratio, tail.span
        lo = max(start // m, -(-valid_from // m) + int(self.overlap and valid_from > 0))
        hi, lead = end // m, self.overlap and lo > 0
        entries = None
        if hi > lo:
            base = (lo - lead) * m
            held = torch.arange(base, max(base, start), device=kv.device) % span
            rows_kv = torch.cat([tail.kv[row, held], kv[max(0, base - start) : hi * m - start]])
            rows_gate = torch.cat([tail.gate[row, held], gate[max(0, base - start) : hi * m - start]])
            entries = self.pool(rows_kv.view(-1, m, kv.shape[-1]), rows_gate.view(-1, m, kv.shape[-1]), lo, lead,
                                rotary)
        keep = torch.arange(max(start, end - span), end, device=kv.device)
        tail.kv[row, keep % span], tail.gate[row, keep % span] = kv[keep - start], gate[keep - start]
        return lo, entries


class Indexer(nn.Module):
    """CSA's lightning indexer: its own compressor of `index_dim`; query t scores entry s as
    sum_h w_t,h relu(q_t,h . k_s) and keeps its `index_topk` best among the closed windows. Its keys are
    read from the pages at fp4 (`codecs/fp4.py`), so it ranks what the pages hold."""

    def __init__(self, cfg: ModelConfig, v4: CompressedShape) -> None:
        super().__init__()
        self.heads, self.dim, self.topk = v4.index_heads, v4.index_dim, v4.index_topk
        self.compressor = Compressor(cfg.hidden_size, v4.index_dim, v4.csa_ratio, True, cfg.rms_norm_eps)
        self.wq_b = nn.Linear(v4.q_lora_rank, v4.index_heads * v4.index_dim, bias=False)
        self.weights_proj = nn.Linear(cfg.hidden_size, v4.index_heads, bias=False)

    def pick(self, x: torch.Tensor, q_low: torch.Tensor, positions: torch.Tensor, rotary: Rotary,
             keys: torch.Tensor, visible: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each query's top k of the entries (keys [n, index_dim]) it may see (`visible` [T, n]): their indices
        [T, k] and which of them it may see (fewer than k closed windows: the rest are not attended)."""
        q = rotate(rotary, self.wq_b(q_low).view(x.shape[0], self.heads, self.dim), positions)
        scores = F.relu(torch.einsum("thd,sd->ths", q.float(), keys.float())) * self.dim**-0.5
        weights = self.weights_proj(x.to(self.weights_proj.weight.dtype)).float() * self.heads**-0.5
        scores = (scores * weights[..., None]).sum(dim=1).masked_fill(~visible, float("-inf"))
        chosen = scores.topk(min(self.topk, keys.shape[0]), dim=-1).indices
        return chosen, visible.gather(-1, chosen)


class V4Attention(nn.Module):
    """Shared K=V multi-query attention over the raw window and, on CSA/HCA layers, the compressed entries."""

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        v4, hidden, eps = cfg.v4, cfg.hidden_size, cfg.rms_norm_eps
        assert v4 is not None
        self.v4, self.kind, self.h, self.eps = v4, v4.kinds[layer], cfg.num_heads, eps
        self.wq_a = nn.Linear(hidden, v4.q_lora_rank, bias=False)
        self.q_norm = RMSNorm(v4.q_lora_rank, eps)
        self.wq_b = nn.Linear(v4.q_lora_rank, self.h * v4.dim, bias=False)
        self.wkv = nn.Linear(hidden, v4.dim, bias=False)
        self.norm = RMSNorm(v4.dim, eps)
        self.wo_a = nn.Linear(self.h * v4.dim // v4.o_groups, v4.o_groups * v4.o_lora_rank, bias=False)
        self.wo_b = nn.Linear(v4.o_groups * v4.o_lora_rank, hidden, bias=False)
        self.attn_sink = nn.Parameter(torch.empty(self.h))
        if self.kind != "sliding":
            ratio = v4.ratio_of(layer)
            self.compressor = Compressor(hidden, v4.dim, ratio, self.kind == "csa", eps)
        if self.kind == "csa":
            self.indexer = Indexer(cfg, v4)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rotary: Rotary, kv: V4LayerKV,
                meta: AttentionMetadata) -> torch.Tensor:
        v4, t = self.v4, x.shape[0]
        q_low = self.q_norm(self.wq_a(x))
        q = rotate(rotary, unit_rms(self.wq_b(q_low).view(t, self.h, v4.dim), self.eps), positions)
        keys = rotate(rotary, self.norm(self.wkv(x))[:, None], positions)
        kv.raw.codec.encode_into(kv.raw.k, meta.groups[0].slot_mapping, keys)
        if kv.entries is not None:
            self.compress(x, kv, meta, rotary)
        out = torch.empty_like(q)
        for i, (a, b, start, end) in enumerate(spans(meta)):
            raw, where, entries, index_keys = self.context(i, start, end, kv, meta, x.dtype)
            piece = max(1, BUDGET // self.per_query(raw.shape[0], 0 if entries is None else entries.shape[0]))
            for p in range(a, b, piece):  # queries a piece: their scores within the budget
                e = min(p + piece, b)
                out[p:e] = self.attend(q[p:e], raw, where, entries, index_keys, x[p:e], q_low[p:e], positions[p:e],
                                       rotary)
        grouped = rotate(rotary, out, -positions).reshape(t, v4.o_groups, -1)
        weight = self.wo_a.weight.view(v4.o_groups, v4.o_lora_rank, -1)
        return self.wo_b(torch.einsum("tgi,gri->tgr", grouped, weight).flatten(1))

    def compress(self, x: torch.Tensor, kv: V4LayerKV, meta: AttentionMetadata, rotary: Rotary) -> None:
        """The entries (and a CSA layer's indexer keys) of every window the step's tokens close, into the pages."""
        assert kv.entries is not None and kv.tail is not None
        projected = self.compressor.project(x)
        indexed = self.indexer.compressor.project(x) if self.kind == "csa" else None
        for i, (a, b, start, end) in enumerate(spans(meta)):
            row, valid = kv.step.rows[i], kv.step.valid_from[i]
            first, entries = self.compressor.close(projected[0][a:b], projected[1][a:b], kv.tail, row, start, end,
                                                   valid, rotary)
            keys = None
            if indexed is not None and kv.index_tail is not None:
                _, keys = self.indexer.compressor.close(indexed[0][a:b], indexed[1][a:b], kv.index_tail, row, start,
                                                        end, valid, rotary)
            if entries is not None:
                kv.entries.write(meta.block_tables[i], first, entries, keys)

    def context(self, i: int, start: int, end: int, kv: V4LayerKV, meta: AttentionMetadata, dtype: torch.dtype,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Sequence i's raw keys and their positions, its closed windows' entries (compressed layers) and a CSA
        layer's indexer keys (fp4, decoded)."""
        raw, where = read_window(kv.raw, meta.groups[0].block_tables[i], start, end, self.v4.window, dtype)
        if kv.entries is None:
            return raw, where, None, None
        return raw, where, *kv.entries.read(meta.block_tables[i], end // kv.entries.ratio, dtype)

    def per_query(self, raw: int, entries: int) -> int:
        """Score elements a query takes: its heads over the raw window and the entries it scores (a CSA layer:
        its top k, gathered, and its indexer's heads over every entry)."""
        if self.kind != "csa":
            return self.h * (raw + entries)
        k = min(self.v4.index_topk, entries)
        return max(self.h * (raw + k), k * self.v4.dim, self.v4.index_heads * entries)

    def attend(self, q: torch.Tensor, raw: torch.Tensor, where: torch.Tensor, entries: torch.Tensor | None,
               index_keys: torch.Tensor | None, x: torch.Tensor, q_low: torch.Tensor, positions: torch.Tensor,
               rotary: Rotary) -> torch.Tensor:
        """Queries at `positions` over their raw window and the entries whose windows have closed: all of them on
        an HCA layer, the indexer's top k (gathered per query) on a CSA layer."""
        gap = positions[:, None] - where[None, :]
        seen, scale = (gap >= 0) & (gap < self.v4.window), self.v4.dim**-0.5
        if entries is None:
            return attend(q, raw, seen, self.attn_sink, scale)
        closed = torch.arange(entries.shape[0], device=q.device)[None, :] < \
            ((positions + 1) // self.compressor.ratio)[:, None]
        if index_keys is None:
            return attend(q, torch.cat([raw, entries]), torch.cat([seen, closed], dim=1), self.attn_sink, scale)
        chosen, chosen_seen = self.indexer.pick(x, q_low, positions, rotary, index_keys, closed)
        return attend(q, raw, seen, self.attn_sink, scale, entries[chosen], chosen_seen)


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
