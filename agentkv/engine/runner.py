"""The device runner: the model, its KV pages, the attention kernels and the CUDA graphs, built in named stages.

`LLM` (engine/llm.py) is the loop: it takes requests, asks the scheduler for a `StepPlan` and turns sampled
tokens into outputs. Everything that touches the device is here: the model loaded and its attention backend
chosen (`_load`, `_bind_backend`), the KV budget sized and cut into pages (`_size_pages`), the page pool over the
tiers' stores (`build_pool`), decode steps captured (`_capture_graphs`), and one step's forward pass and
sampling (`run`). The engine builds it in two halves because the tiers below the GPU need the page size before
the pool can hold their stores.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import torch

from agentkv.codecs import get_codec
from agentkv.engine.block_size import block_size_for
from agentkv.engine.compressed import CompressedLayout, CompressorTails, raw_window_fields
from agentkv.engine.cuda_graphs import DecodeGraphs
from agentkv.engine.pages import PageLayout
from agentkv.engine.pool import PagePool
from agentkv.engine.sampler import sample
from agentkv.engine.sequence import EngineSequence
from agentkv.engine.sliding import SlidingPages
from agentkv.engine.state_slots import StateSlots
from agentkv.kernels.attention import LayerKV, SeqSlice, TorchAttention
from agentkv.kernels.backends import make_backend
from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.ids import BlockIds
from agentkv.kvcache.policy import Policy
from agentkv.kvcache.sizing import kv_bytes_per_block, state_bytes
from agentkv.model.deltanet import StateSpan, StateStep, state_slot_bytes, state_views
from agentkv.model.llama import LlamaForCausalLM
from agentkv.model.loader import load_model
from agentkv.scheduler import StepPlan


class ModelRunner:
    def __init__(self, model: str | LlamaForCausalLM, ids: BlockIds, *, dtype: str | None, device: str | None,
                 kv_codec: str, kv_cache_bytes: int | None, gpu_memory_utilization: float, block_size: int | None,
                 max_num_batched_tokens: int, max_num_seqs: int, attention_backend: str | None,
                 state_snapshots: int | None = None) -> None:
        """The first half: the model on its device, its backend, and its KV budget cut into pages (see `LLM`
        for the arguments; `block_size` None: what the model needs, engine/block_size.py). `ids` names blocks for
        both page groups."""
        self.state_snapshots = state_snapshots
        self._load(model, dtype, device)
        self.codec = get_codec(_auto_codec(self.dtype) if kv_codec == "auto" else kv_codec)
        self.block = block_size_for(self.config.v4, block_size)
        self.block_size, self.max_num_seqs, self.ids = self.block.tokens, max_num_seqs, ids
        self._bind_backend(attention_backend, replace=isinstance(model, str) or attention_backend is not None)
        self._size_pages(kv_cache_bytes, gpu_memory_utilization, max_num_batched_tokens)
        self.pool: PagePool
        self.kv_layers: list[LayerKV] = []
        self.graphs: DecodeGraphs | None = None  # decode steps as CUDA graphs, one per batch size
        self.meta: Any = None  # this step's attention metadata

    # ---- stages --------------------------------------------------------------------------------------------
    def _load(self, model: str | LlamaForCausalLM, dtype: str | None, device: str | None) -> None:
        """A checkpoint folder loaded on `device` (CUDA when there is one), or a module as given."""
        if isinstance(model, str):
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self.model = load_model(model, dtype, self.device)
            self.name = model
        else:
            self.model = model.eval()
            self.device = next(model.parameters()).device
            self.name = f"module-{id(model)}"
        self.config = self.model.config
        self.dtype = next(self.model.parameters()).dtype
        # priced in the dtype the model runs in (its linear layers' states are kept in it)
        self.spec = dataclasses.replace(self.config, torch_dtype=str(self.dtype).removeprefix("torch.")).spec(self.name)

    def _bind_backend(self, attention_backend: str | None, replace: bool) -> None:
        """Every layer attends through one backend: 'auto' picks by device; a module keeps its own unless told."""
        attention = [layer.self_attn for layer in self.model.model.layers if hasattr(layer, "self_attn")]
        if self.config.v4 is not None:  # its layers attend in kernels/compressed_attention.py
            if attention_backend not in (None, "auto", "torch"):
                raise ValueError(f"attention backend '{attention_backend}': DeepSeek-V4's compressed attention runs "
                                 "on the torch backend only (agentkv.kernels.compressed_attention)")
            self.backend = TorchAttention()
            return
        if replace:
            cfg = self.config  # MLA decodes attend over latent + RoPE key vectors
            width = cfg.mla.entry_dim if cfg.mla is not None else cfg.head_dim
            backend = make_backend(attention_backend or "auto", self.device, self.codec, width)
            for module in attention:
                module.backend = backend
        self.backend = attention[0].backend

    def _size_pages(self, kv_cache_bytes: int | None, utilization: float, step_tokens: int) -> None:
        """The full layers' page layout and count; the sliding layers' own page group and the linear layers' state
        slots, sized first."""
        cfg, bs = self.config, self.block_size
        window = cfg.v4.window if cfg.v4 else _one_window(cfg)
        self._layouts(window)
        self.page_bytes = kv_bytes_per_block(self.spec, self.codec.spec, bs)
        assert self.page_bytes == self.layout.page_bytes, "codec pages disagree with kvcache.sizing"
        self.sliding: SlidingPages | None = None  # the sliding layers' own page group (engine/sliding.py)
        self.tails = CompressorTails(cfg.v4, self.max_num_seqs, self.device) if cfg.v4 else None
        kv_bytes = self._kv_budget(kv_cache_bytes, utilization, step_tokens)
        if self.tails is not None:  # V4's compressors' unfinished windows, one row a running sequence
            kv_bytes -= self.tails.nbytes
        if self.window_layout is not None:
            wl = self.window_layout
            n = SlidingPages.pages_for(kv_bytes, wl.page_bytes, self.max_num_seqs, step_tokens, window, bs)
            self.sliding = SlidingPages(wl, n, window, bs, self.device, copy.copy(self.backend), self.ids,
                                        cfg.chunked)
        self.states: StateSlots | None = None  # the linear layers' state slots (engine/state_slots.py)
        self.state_slots = 0
        if cfg.deltanet is not None:
            slot_bytes = state_slot_bytes(cfg, self.dtype)
            assert slot_bytes == state_bytes(self.spec, self.codec.spec, bs), "state slots disagree with sizing"
            self.state_slots = StateSlots.slots_for(kv_bytes, slot_bytes, self.max_num_seqs, self.state_snapshots)
            kv_bytes -= self.state_slots * slot_bytes
        self.num_pages = (kv_bytes - (self.sliding.nbytes if self.sliding else 0)) // self.page_bytes
        if self.num_pages < 2:
            raise ValueError(f"KV budget holds {self.num_pages} pages of {self.page_bytes} bytes: give more "
                             "kv_cache_bytes")

    def _layouts(self, window: int) -> None:
        """The pool's page (the full layers', MLA's latent or V4's compressed entries) and the windowed layers'
        page (V4: every layer's raw window, one shared K=V vector a token)."""
        cfg, bs, codec = self.config, self.block_size, self.codec
        self.layout: PageLayout | CompressedLayout
        if cfg.v4 is not None:
            self.layout = CompressedLayout.of_model(codec, cfg.v4, bs)
            self.window_layout = PageLayout(codec, cfg.num_layers, raw_window_fields(codec, cfg.v4, bs), ())
            return
        full_layers = cfg.num_layers - sum(1 for w in cfg.layer_windows if w) - sum(cfg.linear_layers)
        self.layout = PageLayout.of_model(codec, cfg, full_layers, bs)
        self.window_layout = PageLayout.of(codec, cfg.num_layers - full_layers, bs, cfg.num_kv_heads,
                                           cfg.head_dim) if window else None

    def build_pool(self, stores: list, *, compile: bool, cuda_graphs: bool, policy: Policy | None = None) -> None:
        """The second half: the page pool over the lower tiers' `stores`, bound to the backend, and the state
        slots whose snapshots `policy` places; then the forward pass compiled or its decode steps captured."""
        cfg = self.config
        max_pages = min(self.num_pages, -(-cfg.max_position_embeddings // self.block_size))
        self.backend.bind(self.max_num_seqs, max_pages, self.device)
        self.pool = PagePool(self.layout, self.num_pages, self.device, self.ids, stores, self.backend,
                             self.max_num_seqs)
        if self.sliding is not None:
            self.sliding.backend.bind(self.max_num_seqs, max_pages, self.device)
        if self.state_slots:
            assert policy is not None, "a model with linear layers needs the policy that places its snapshots"
            self.states = StateSlots(cfg, self.state_slots, self.max_num_seqs, self.dtype, self.device, self.ids,
                                     self.block_size, policy)
        self.kv_layers = self._by_layer(self.pool.layers, self.sliding.layers if self.sliding else [],
                                        self.states.layers if self.states else [], self.tails)
        if compile:  # fuses the per-token work; the attention backend's Python loop stays eager
            self.model.forward = torch.compile(self.model.forward, dynamic=True)  # type: ignore[method-assign]
        # a MoE layer groups tokens by expert on the host (a sync a captured graph cannot replay): no graphs
        if cuda_graphs and self.sliding is None and self.states is None and not compile and self.device.type == "cuda" \
                and hasattr(self.backend, "capturing") and not cfg.num_experts:
            self._capture_graphs(max_pages)

    def _capture_graphs(self, max_pages: int) -> None:
        cfg = self.config
        self.graphs = DecodeGraphs(self.model.forward, self.pool.layers, self.backend, self.max_num_seqs, max_pages,
                                   self.block_size, cfg.num_kv_heads, self.device)
        self.graphs.capture()

    def _kv_budget(self, kv_cache_bytes: int | None, utilization: float, step_tokens: int) -> int:
        """KV bytes: as given; on CUDA, what `utilization` of the device leaves after the weights and the peak
        activations of a profiled forward pass of a full step; on CPU, 512 MiB."""
        if kv_cache_bytes is not None:
            return kv_cache_bytes
        if self.device.type != "cuda":
            return 512 * 2**20
        activations = self.profile_activations(step_tokens)
        free, total = torch.cuda.mem_get_info(self.device)
        used = total - free  # weights, the CUDA context, other processes
        return int(total * utilization) - used - int(activations * 1.2)

    def profile_activations(self, tokens: int) -> int:
        """Peak bytes (CUDA; 0 elsewhere) a forward pass of one `tokens`-token prefill takes beyond what is
        allocated already, over a scratch KV slab of its own (freed after). It also warms up the kernels."""
        cfg, bs = self.config, self.block_size
        pages = -(-tokens // bs)
        slab = torch.zeros(pages, self.layout.page_bytes, dtype=torch.uint8, device=self.device)
        bound = {k: getattr(self.backend, k) for k in ("device", "tables", "synced") if hasattr(self.backend, k)}
        self.backend.bind(1, pages, self.device)
        meta = self.backend.prepare([SeqSlice(0, list(range(pages)), tokens, tokens)], 1, bs)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device) if cuda else 0
        ids = torch.zeros(tokens, dtype=torch.long, device=self.device) + (cfg.bos_token_id or 0)
        views = []
        if self.window_layout is not None:  # its scratch pages 0.. too: the same table serves both groups
            wl = self.window_layout
            views = wl.views(torch.zeros(pages, wl.page_bytes, dtype=torch.uint8, device=self.device), group=1)
            meta.groups = (meta,)
        linear = []
        if cfg.deltanet is not None:  # one scratch state slot
            scratch = torch.zeros(1, state_slot_bytes(cfg, self.dtype), dtype=torch.uint8, device=self.device)
            linear = state_views(cfg, scratch, self.dtype, StateStep([StateSpan(0, tokens)]))
        tails = None
        if cfg.v4 is not None:  # one scratch row of compressor tails
            tails = CompressorTails(cfg.v4, 1, self.device)
            tails.step.rows, tails.step.valid_from = [0], [0]
        kv = self._by_layer(self.layout.views(slab), views, linear, tails)
        hidden = self.model(ids, torch.arange(tokens, device=self.device), kv, meta)
        self.model.logits(hidden[-1:])
        peak = torch.cuda.max_memory_allocated(self.device) - before if cuda else 0
        del slab, hidden, views, kv, linear
        for k, v in bound.items():  # a bound engine's block tables come back as they were
            setattr(self.backend, k, v)
        if cuda:
            torch.cuda.empty_cache()
        return max(peak, 0)

    def layers_text(self) -> str:
        """Its layers as the start-up line names them: '28 layers', or their groups, where each group's pages
        live, and the experts: '6 layers: 1 full + 5 sliding (window 8, 1,234 pages of their own), MoE ...'."""
        cfg = self.config
        groups = cfg.layer_groups()
        text = f"{cfg.num_layers} layers"
        if cfg.v4 is not None and self.sliding is not None and self.tails is not None:
            text += (f": {cfg.v4.describe()} ({self.sliding.slab.shape[0]:,} raw-window pages of their own; "
                     f"entries in the pool, compressor tails {self.tails.nbytes:,} B)")
        elif groups:
            own = f", {self.sliding.slab.shape[0]:,} pages of their own" if self.sliding else ""
            span = "chunk" if cfg.chunked else "window"
            text += ": " + " + ".join(f"{g.layers} {g.kind}" + (f" ({span} {g.window}{own})" if g.window else "")
                                      for g in groups if g.kind != "linear")
        if self.states is not None:
            text += (f" + {sum(cfg.linear_layers)} deltanet state ({self.states.slab.shape[0]:,} slots of "
                     f"{self.states.slot_bytes:,} B: live and snapshots)")
        if cfg.num_experts:
            text += f", MoE {cfg.num_experts} experts top-{cfg.experts_per_token} on {sum(cfg.moe_layers)} layers"
        return text

    def _by_layer(self, full: list[Any], sliding: list[LayerKV], linear: list[Any],
                  tails: CompressorTails | None = None) -> list[Any]:
        """Each layer's cache in model order: the full layers' pages from the pool, the sliding ones' from theirs,
        the linear ones' state slots; V4's layers: a raw window each, entries and tails (engine/compressed.py)."""
        if tails is not None:
            return tails.layers(sliding, full)
        cfg, groups = self.config, (iter(full), iter(sliding), iter(linear))
        return [next(groups[2 if cfg.is_linear_layer(i) else int(bool(cfg.window_of(i)))])
                for i in range(cfg.num_layers)]

    # ---- one step ------------------------------------------------------------------------------------------
    def before_forward(self, plan: StepPlan, running: list[EngineSequence]) -> None:
        """The sliding group's share of the plan (its pins and names), then its windows made ready; after the
        pool executed the plan and the tiers repaired what they lost."""
        if self.tails is not None:  # a prefill its tail does not reach rewinds first (engine/compressed.py)
            self.tails.before_forward(plan)
        if self.sliding is not None:
            self.sliding.execute(plan.ops)
            self.sliding.before_forward(plan, running)
        if self.tails is not None:
            self.tails.begin(plan)
        if self.states is not None:  # a prefill whose state is elsewhere restores a snapshot (may rewind it)
            self.states.execute(plan.ops)
            self.states.before_forward(plan)

    def run(self, plan: StepPlan) -> tuple[list[EngineSequence], list[int]]:
        """The step's forward pass (a captured graph when it is decodes only) and a token for every sequence
        whose last position it computed."""
        input_ids, positions, rows, sampling = self._prepare(plan)
        if self.graphs is not None and not plan.prefills and self.graphs.size_for(len(plan.decodes)):
            hidden = self.graphs.run(input_ids, positions, self.meta)
        else:
            hidden = self.model(input_ids, positions, self.kv_layers, self.meta)
        tokens = sample(self.model.logits(hidden[rows]), [s.params for s in sampling],
                        [s.generator for s in sampling], [s.matcher for s in sampling]) if sampling else []
        return sampling, tokens

    def _prepare(self, plan: StepPlan):
        tokens: list[int] = []
        positions: list[int] = []
        slices: list[SeqSlice] = []
        rows: list[int] = []
        sampling: list[EngineSequence] = []
        for c in plan.prefills:
            seq: EngineSequence = c.seq  # type: ignore[assignment]
            end = c.start + c.n
            slices.append(SeqSlice(seq.row, seq.pages, c.n, end))
            tokens += seq.tokens[c.start : end]  # type: ignore[index]
            positions += range(c.start, end)
            if end == seq.target:
                rows.append(len(tokens) - 1)
                sampling.append(seq)
        for seq in plan.decodes:  # type: ignore[assignment]
            p = seq.computed
            slices.append(SeqSlice(seq.row, seq.pages, 1, p + 1))
            tokens.append(seq.tokens[p])  # type: ignore[index]
            positions.append(p)
            rows.append(len(tokens) - 1)
            sampling.append(seq)
        self.meta = self.backend.prepare(slices, len(plan.prefills), self.block_size)
        if self.sliding is not None:
            self.meta.groups = (self.sliding.prepare(plan),)
        dev = self.device
        return (torch.tensor(tokens, dtype=torch.long, device=dev), torch.tensor(positions, dtype=torch.long, device=dev),
                torch.tensor(rows, dtype=torch.long, device=dev), sampling)

    def check(self, cache: KVCache, running: list[EngineSequence]) -> None:
        """The policy core's accounts against both page groups (tests: `check_invariants`)."""
        self.pool.check(cache, running)
        if self.sliding is not None:
            self.sliding.check(running)
        if self.states is not None:
            self.states.check()

    def generator(self, seed: int | None) -> torch.Generator | None:
        """A request's own random stream on this device (None: the global one)."""
        if seed is None:
            return None
        g = torch.Generator(device=self.device)
        g.manual_seed(seed)
        return g


def _auto_codec(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]


def _one_window(cfg: Any) -> int:
    """The sliding layers' window (0: none); the page groups serve one window size so far."""
    windows = {w for w in cfg.layer_windows if w}
    if len(windows) > 1:
        raise ValueError(f"config.json: sliding windows of {sorted(windows)} tokens: one size is supported")
    if windows and all(cfg.layer_windows):
        raise ValueError("config.json: every layer slides: a model needs one full-attention layer here")
    return windows.pop() if windows else 0
