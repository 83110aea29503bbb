"""`agentkv kv-eval`: what a KV codec does to a model's outputs, measured on the user's own checkpoint.

The text is split into windows of `context` tokens; each window is one teacher-forced prefill, run in chunks
as the engine runs a long prompt: each chunk's K/V are encoded into pages by the codec, then its queries
attend over the decoded pages. The reference stores bf16 pages. For each codec:

- attention-output relative error per layer, on the reference's own Q/K/V (so layers are measured apart,
  errors not compounded): ||attn(q, dec(enc(k)), dec(enc(v))) - attn(q, k, v)|| / ||attn(q, k, v)||
  (DeepSeek-V4: each layer's attention on the reference's input over the codec's pages, `evaluate/v4.py`);
- next-token KL(reference || codec) and top-1 agreement, the codec's K/V used in every layer;
- perplexity and its change, against the reference's;
- bytes per token of this model, and how many 96k-token contexts fit per GPU for each catalog model and GPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from agentkv.codecs import KVCodec, get_codec
from agentkv.kernels.attention import LayerKV, Mask
from agentkv.model.deltanet import StateSpan, StateStep, state_slot_bytes, state_views

DOSSIER_CONTEXT = 96_000  # tokens: the dossier's long agentic context
REFERENCE = "bf16"


@dataclass(slots=True)
class EvalMeta:
    """What the eval backend needs of a chunk: where its tokens go and which positions it covers."""

    slot_mapping: torch.Tensor
    start: int
    end: int


def attend(q: torch.Tensor, kv: LayerKV, start: int, end: int, mask: Mask) -> torch.Tensor:
    """Queries at positions start..end-1 [L, heads, D] over the decoded pages holding positions 0..end-1,
    under the layer's mask (causal, its window, its sinks)."""
    pages = torch.arange(-(-end // kv.block_size), device=q.device)
    k = kv.codec.decode(kv.k, pages, q.dtype).flatten(0, 1)[:end].transpose(0, 1)
    v = kv.codec.decode(kv.v, pages, q.dtype).flatten(0, 1)[:end].transpose(0, 1)
    seen = mask.visible(torch.arange(end, device=q.device), torch.arange(start, end, device=q.device)[None])[0]
    if mask.sinks is None:
        out = F.scaled_dot_product_attention(q.transpose(0, 1), k, v, attn_mask=seen, scale=mask.scale,
                                             enable_gqa=True)
        return out.transpose(0, 1)
    g = q.shape[1] // k.shape[0]  # a sink is one more key per head, of value 0
    s = torch.einsum("lhd,htd->hlt", q.float(), k.float().repeat_interleave(g, 0)) * mask.scale
    sink = mask.sinks.float()[:, None, None].expand(-1, s.shape[1], 1)
    p = torch.softmax(torch.cat([s.masked_fill(~seen, float("-inf")), sink], -1), -1)[..., :-1]
    return torch.einsum("hlt,htd->lhd", p, v.float().repeat_interleave(g, 0)).to(q.dtype)


def pages_for(codec: KVCodec, tokens: int, block_size: int, kv_heads: int, head_dim: int,
              device: torch.device) -> LayerKV:
    """One layer's K and V fields for `tokens` tokens in pages 0, 1, … (slot = position)."""
    pages = -(-tokens // block_size)

    def alloc(fields):
        return {f.name: torch.zeros(pages, *f.shape, dtype=f.dtype, device=device) for f in fields}

    return LayerKV(codec, alloc(codec.key_fields(block_size, kv_heads, head_dim)),
                   alloc(codec.value_fields(block_size, kv_heads, head_dim)))


class EvalAttention:
    """The model's attention backend for kv-eval: encode into the layer's pages, attend over them; while
    `record` is a list, keep each layer's (q, k, v, out) of the chunk for the per-layer errors."""

    def __init__(self) -> None:
        self.record: list[tuple[torch.Tensor, ...]] | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kv: LayerKV, meta: EvalMeta,
                scale: float, window: int = 0, sinks: torch.Tensor | None = None, chunk: int = 0) -> torch.Tensor:
        kv.codec.encode_into(kv.k, meta.slot_mapping, k)
        kv.codec.encode_into(kv.v, meta.slot_mapping, v)
        mask = Mask(scale, window, None if sinks is None else sinks.detach(), chunk)  # re-attended off the graph
        out = attend(q, kv, meta.start, meta.end, mask)
        if self.record is not None:
            self.record.append((q, k, v, out, mask))
        return out


@dataclass(slots=True)
class CodecResult:
    codec: str
    bytes_per_token: float
    attn_rel_err: list[float]  # per layer
    kl: float  # mean next-token KL(reference || codec), nats
    top1: float  # fraction of positions where the argmax agrees with the reference's
    ppl: float
    ppl_change: float  # relative: ppl / reference ppl - 1
    contexts_per_gpu: dict[str, dict[str, float | None]] = field(default_factory=dict)


@dataclass(slots=True)
class KVEval:
    model: str
    text: str
    tokens: int  # scored positions
    context: int
    windows: int
    chunk: int
    block_size: int
    device: str
    results: list[CodecResult]


@dataclass(slots=True)
class _Sums:
    """Running sums for one codec over every chunk of every window."""

    err: list[float]
    ref: list[float]
    kl: float = 0.0
    top1: float = 0.0
    nll: float = 0.0


def attention_errors(codec: KVCodec, record: list[tuple[Any, ...]], layers: list[LayerKV],
                     start: int, end: int, sums: _Sums) -> None:
    """Add one chunk's squared attention-output errors, layer by layer, on the reference's q, k, v."""
    slots = torch.arange(start, end, device=record[0][0].device)
    for i, ((q, k, v, out, mask), kv) in enumerate(zip(record, layers, strict=True)):
        codec.encode_into(kv.k, slots, k)
        codec.encode_into(kv.v, slots, v)
        ref = out.float()
        sums.err[i] += float((attend(q, kv, start, end, mask).float() - ref).pow(2).sum())
        sums.ref[i] += float(ref.pow(2).sum())


EVAL_WEIGHTS = "fp8"  # one weight dtype for every model and GPU, so the GPUs compare on HBM alone


def contexts_per_gpu(codec_name: str, context: int = DOSSIER_CONTEXT) -> dict[str, dict[str, float | None]]:
    """For each catalog model and GPU: `context`-token contexts per GPU at the tensor parallelism (1-8) that fits
    most, fp8 weights throughout, KV replicated across ranks where the model keeps it so (MLA's latent, KV
    heads fewer than ranks). None: the weights do not fit on 8. More HBM never gives fewer: each TP's count
    grows with HBM, and the best of them does too."""
    from agentkv.catalog import hardware_table, models
    from agentkv.kvcache.sizing import codec
    from agentkv.report.levers import contexts_per_gpu as per_gpu
    from agentkv.sim.stepcost import Deployment

    out: dict[str, dict[str, float | None]] = {}
    for mname, m in models().items():
        out[mname] = {}
        for hname, hw in hardware_table().items():
            fits = [per_gpu(d, context) for tp in (1, 2, 4, 8)
                    if (d := Deployment(hw, m, codec(codec_name), tp=tp, weight_dtype=EVAL_WEIGHTS)).kv_capacity_bytes > 0]
            out[mname][hname] = max(fits) if fits else None
    return out


def evaluate(model_dir: str, codecs: list[str], text: str, text_name: str, context: int | None = None,
             windows: int = 4, chunk: int = 512, block_size: int | None = None, device: str = "cpu",
             dtype: str | None = None, progress: Any = None) -> KVEval:
    from agentkv.engine.block_size import block_size_for
    from agentkv.engine.tokenizer import Tokenizer
    from agentkv.kvcache.sizing import codec as codec_spec
    from agentkv.kvcache.sizing import kv_bytes_per_token
    from agentkv.model.loader import load_model

    codecs = [REFERENCE, *[c for c in codecs if c != REFERENCE]]
    model = load_model(model_dir, dtype or ("float32" if device == "cpu" else "bfloat16"), device,
                       backend=EvalAttention())
    cfg = model.config
    block_size = block_size_for(cfg.v4, block_size).tokens  # none given: the engine's default for this model
    context = min(context or cfg.max_position_embeddings, cfg.max_position_embeddings)
    ids = Tokenizer(model_dir).encode(text)
    spans = [ids[i * context : (i + 1) * context] for i in range(min(windows, len(ids) // context) or 1)]
    if len(spans[0]) < 2:
        raise ValueError(f"{text_name}: {len(ids)} tokens; kv-eval needs at least 2")
    attending = cfg.num_layers - sum(cfg.linear_layers)  # a linear layer's state has no pages a codec stores
    sums = {c: _Sums([0.0] * attending, [0.0] * attending) for c in codecs}
    task = progress.add_task("kv-eval", total=sum(-(-len(s) // chunk) for s in spans)) if progress else None
    for span in spans:
        for _ in score_window(model, {c: get_codec(c) for c in codecs}, span, chunk, block_size, sums):
            if progress:
                progress.advance(task)
    scored = sum(len(s) - 1 for s in spans)
    spec, base_nll = cfg.spec(model_dir), sums[REFERENCE].nll
    results = []
    for c in codecs:
        s = sums[c]
        err = [math.sqrt(e / r) if r else 0.0 for e, r in zip(s.err, s.ref, strict=True)]
        results.append(CodecResult(c, kv_bytes_per_token(spec, codec_spec(c), block_size), err, s.kl / scored,
                                   s.top1 / scored if c != REFERENCE else 1.0, math.exp(s.nll / scored),
                                   math.exp((s.nll - base_nll) / scored) - 1, contexts_per_gpu(c)))
    return KVEval(model_dir, text_name, scored, context, len(spans), chunk, block_size, device, results)


class BackendPages:
    """The eval's caches for the families whose layers attend through its backend: K/V pages per layer, a
    fresh DeltaNet state slot per linear layer; the reference's q/k/v recorded by the backend."""

    def __init__(self, model: Any, impl: dict[str, KVCodec], tokens: int, block_size: int) -> None:
        cfg = self.config = model.config
        self.backend = next(layer.self_attn for layer in model.model.layers if hasattr(layer, "self_attn")).backend
        self.device, self.dtype = next(model.parameters()).device, next(model.parameters()).dtype
        self.impl, self.tokens, self.block_size, self.step = impl, tokens, block_size, StateStep()
        self.heads, self.dim = (1, cfg.mla.entry_dim) if cfg.mla else (cfg.num_kv_heads, cfg.head_dim)  # MLA: latent

    def layers(self, name: str, apart: bool = False) -> list[Any]:
        """Pages for the attention layers; unless `apart` (the attention layers alone), a state slot for the
        linear ones (model/deltanet.py)."""
        cfg, states = self.config, iter([])
        if not apart and cfg.deltanet is not None:
            slab = torch.zeros(1, state_slot_bytes(cfg, self.dtype), dtype=torch.uint8, device=self.device)
            states = iter(state_views(cfg, slab, self.dtype, self.step))
        return [next(states) if cfg.is_linear_layer(i) else
                pages_for(self.impl[name], self.tokens, self.block_size, self.heads, self.dim, self.device)
                for i in range(cfg.num_layers) if not apart or not cfg.is_linear_layer(i)]

    def meta(self, a: int, b: int) -> tuple[torch.Tensor, Any]:
        pos = torch.arange(a, b, device=self.device)
        self.step.prefills = [StateSpan(0, b - a)]
        return pos, EvalMeta(pos, a, b)

    @contextmanager
    def recording(self) -> Iterator[list[Any]]:
        self.backend.record = record = []
        try:
            yield record
        finally:
            self.backend.record = None

    def errors(self, codec: KVCodec, record: list[Any], layers: list[Any], a: int, b: int, meta: Any,
               sums: _Sums) -> None:
        attention_errors(codec, record, layers, a, b, sums)


def score_window(model: Any, impl: dict[str, KVCodec], span: list[int], chunk: int, block_size: int,
                 sums: dict[str, _Sums]):
    """Teacher-force one window chunk by chunk through the reference and every codec, adding to `sums`;
    yields after each chunk (for the progress bar)."""
    from agentkv.evaluate.v4 import V4Pages

    plan = (V4Pages if model.config.v4 else BackendPages)(model, impl, len(span), block_size)
    tokens = torch.tensor(span, device=plan.device)
    names = list(impl)
    runs = {c: plan.layers(c) for c in names}
    apart = {c: plan.layers(c, apart=True) for c in names[1:]}  # the codec on the reference's inputs, layer by layer
    for a in range(0, len(span), chunk):
        b = min(a + chunk, len(span))
        (pos, meta), targets = plan.meta(a, b), tokens[a + 1 : b + 1]
        with plan.recording() as record:
            ref = model.logits(model(tokens[a:b], pos, runs[names[0]], meta))[: len(targets)].log_softmax(-1)
        sums[names[0]].nll -= float(ref.gather(-1, targets[:, None]).sum())
        for c in names[1:]:
            plan.errors(impl[c], record, apart[c], a, b, meta, sums[c])
            out = model.logits(model(tokens[a:b], pos, runs[c], meta))[: len(targets)].log_softmax(-1)
            s = sums[c]
            s.kl += float((ref.exp() * (ref - out)).sum())
            s.top1 += float((ref.argmax(-1) == out.argmax(-1)).sum())
            s.nll -= float(out.gather(-1, targets[:, None]).sum())
        yield


def to_json(ev: KVEval) -> dict[str, Any]:
    return asdict(ev)
