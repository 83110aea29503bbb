"""`LLM(model=DIR).generate(prompts, sampling_params)`: the engine, one plan per step.

Each step: the shared scheduler returns one `StepPlan` (the policy core's tier moves, pages allocated, named
and freed, and the batch); the page pool carries its operations out, in order; the attention backend builds
its metadata from the batch; the model runs the flattened batch over paged KV; the sampler picks tokens; the
scheduler accounts the step (naming full blocks, so later prompts that share the prefix skip their prefill).
"""

from __future__ import annotations

import copy
import functools
import itertools
import time
import weakref
from typing import Any

import numpy as np
import torch

from agentkv.codecs import get_codec
from agentkv.engine.cuda_graphs import DecodeGraphs
from agentkv.engine.detokenizer import Detokenizer
from agentkv.engine.grammar import Grammars
from agentkv.engine.outputs import CompletionOutput, RequestOutput
from agentkv.engine.pages import PageLayout
from agentkv.engine.pool import PagePool
from agentkv.engine.sampler import sample
from agentkv.engine.sequence import EngineSequence, SamplingParams
from agentkv.engine.sessions import MAX_SESSIONS, SessionIds
from agentkv.engine.sliding import SlidingPages
from agentkv.engine.tiering import Tiering
from agentkv.kernels.attention import LayerKV, SeqSlice
from agentkv.kernels.backends import make_backend
from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.ids import BlockIds
from agentkv.kvcache.policies import make_policy
from agentkv.kvcache.policy import Policy
from agentkv.kvcache.sizing import kv_bytes_per_block
from agentkv.kvcache.tiers import TierSpec
from agentkv.model.llama import LlamaForCausalLM
from agentkv.model.loader import load_model
from agentkv.scheduler import Allocate, Scheduler, SchedulerConfig, Status, StepPlan
from agentkv.storage.host import HostSlab
from agentkv.storage.keys import namespace_digest
from agentkv.workload.trace import FINISH_END, FINISH_TOOL, FINISH_UNKNOWN

Prompt = str | list[int] | dict[str, Any]


class LLM:
    def __init__(
        self,
        model: str | LlamaForCausalLM,
        *,
        dtype: str | None = None,
        device: str | None = None,
        kv_codec: str = "auto",
        kv_cache_bytes: int | None = None,
        gpu_memory_utilization: float = 0.9,
        host_kv_bytes: int = 0,
        kv_tiers: str | None = None,
        block_size: int = 16,
        max_num_batched_tokens: int = 2048,
        max_num_seqs: int = 64,
        enable_prefix_caching: bool = True,
        policy: str | Policy = "lru",
        compile: bool = False,
        check_invariants: bool = False,
        attention_backend: str | None = None,
        cuda_graphs: bool = True,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        """`model`: a Hugging Face checkpoint folder, or an already-built module (benchmarks, random weights).
        kv_codec: how KV pages are stored ('auto': the model's dtype). kv_tiers: tiers below the GPU,
        e.g. "dram=8GiB,disk=100GiB@/mnt/nvme/kv,redis=20GiB@redis://host:6379" (see engine/tiering.py).
        policy: a policy's name (lru, lfu, cost, agent) or a `Policy` of your own.
        check_invariants: compare the policy core's accounts with the pages after every step (tests).
        attention_backend: 'auto' (Triton kernels on CUDA, the torch reference elsewhere), 'torch' or 'triton';
        None keeps a given module's own backend. cuda_graphs: capture decode steps (CUDA, Triton backend).
        max_sessions: sessions the policy follows at once (the least recently seen beyond it are forgotten)."""
        if isinstance(model, str):
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self.model = load_model(model, dtype, self.device)
            name = model
        else:
            self.model = model.eval()
            self.device = next(model.parameters()).device
            name = f"module-{id(model)}"
        cfg = self.config = self.model.config
        self.dtype = next(self.model.parameters()).dtype
        self.tokenizer: Any = _tokenizer(model) if isinstance(model, str) else None
        self.codec = get_codec(_auto_codec(self.dtype) if kv_codec == "auto" else kv_codec)
        self.block_size = block_size
        window = _one_window(cfg)
        full_layers = cfg.num_layers - sum(1 for w in cfg.layer_windows if w)
        self.layout = PageLayout.of_model(self.codec, cfg, full_layers, block_size)
        spec = cfg.spec(name)
        page_bytes = kv_bytes_per_block(spec, self.codec.spec, block_size)
        assert page_bytes == self.layout.page_bytes, "codec pages disagree with kvcache.sizing"
        if isinstance(model, str) or attention_backend is not None:
            backend = make_backend(attention_backend or "auto", self.device, self.codec)
            for layer in self.model.model.layers:
                layer.self_attn.backend = backend
        self.backend = self.model.model.layers[0].self_attn.backend
        self.ids = BlockIds()
        self.sliding = None  # the sliding layers' own page group (engine/sliding.py)
        self.window_layout = PageLayout.of(self.codec, cfg.num_layers - full_layers, block_size, cfg.num_kv_heads,
                                           cfg.head_dim) if window else None
        kv_bytes = self._kv_budget(kv_cache_bytes, gpu_memory_utilization, max_num_batched_tokens)
        if self.window_layout is not None:
            wl = self.window_layout
            n = SlidingPages.pages_for(kv_bytes, wl.page_bytes, max_num_seqs, max_num_batched_tokens, window,
                                       block_size)
            self.sliding = SlidingPages(wl, n, window, block_size, self.device, copy.copy(self.backend), self.ids,
                                        cfg.chunked)
        num_pages = (kv_bytes - (self.sliding.nbytes if self.sliding else 0)) // page_bytes
        if num_pages < 2:
            raise ValueError(f"KV budget holds {num_pages} pages of {page_bytes} bytes: give more kv_cache_bytes")
        tiers = [TierSpec("gpu", num_pages * page_bytes, page_bytes)]
        stores = []
        if host_kv_bytes:
            tiers.append(TierSpec("dram", host_kv_bytes, page_bytes))
            stores.append(HostSlab(tiers[-1].capacity_blocks, page_bytes, pin=self.device.type == "cuda"))
        self.tiering = None
        if kv_tiers:
            if host_kv_bytes:
                raise ValueError("give host_kv_bytes or kv_tiers (with a dram tier), not both")
            self.tiering = Tiering(kv_tiers, page_bytes, block_size, pin=self.device.type == "cuda")
            tiers += self.tiering.tiers
            stores += self.tiering.stores
        self.tier_names = [t.name for t in tiers]
        self.cache = KVCache(tiers, policy if isinstance(policy, Policy) else
                             make_policy(policy, model=spec, block_size=block_size))
        self.scheduler = Scheduler(SchedulerConfig(block_size, max_num_batched_tokens, max_num_seqs,
                                                   enable_prefix_caching), self.cache)
        if self.tiering is not None:
            self.scheduler.at_hand = functools.partial(self.tiering.at_hand, self.cache, self.ids.keys)
        max_pages = min(num_pages, -(-cfg.max_position_embeddings // block_size))
        self.backend.bind(max_num_seqs, max_pages, self.device)
        self.pool = PagePool(self.layout, num_pages, self.device, self.ids, stores, self.backend, max_num_seqs)
        if self.sliding is not None:
            self.sliding.backend.bind(max_num_seqs, max_pages, self.device)
        self.kv_layers = self._by_layer(self.pool.layers, self.sliding.layers if self.sliding else [])
        # an engine dropped, or a process exiting, without close() still flushes and closes its tiers (once)
        self._closer = weakref.finalize(self, self.tiering.close, self.pool, self.cache) if self.tiering else None
        self.namespace = f"{name}|{self.codec.name}|bs{block_size}"  # other models/codecs never share a block
        self.check_invariants = check_invariants
        self._counter = itertools.count()
        self._seqs: dict[str, EngineSequence] = {}
        self._generators: dict[str, torch.Generator | None] = {}
        self._sessions = SessionIds(self.cache.policy.forget_session, max_sessions)
        self._tenants: dict[str, int] = {"": 0}
        self._unreferenced: list[int] = []  # ids whose last request ended: recycled if no tier holds them
        self.prefix_query_tokens = 0
        self.prefix_hit_tokens = np.zeros(len(tiers), dtype=np.int64)
        if compile:  # fuses the per-token work; the attention backend's Python loop stays eager
            self.model.forward = torch.compile(self.model.forward, dynamic=True)  # type: ignore[method-assign]
        self.graphs = None  # decode steps as CUDA graphs, one per batch size (engine/cuda_graphs.py)
        cuda_graphs = cuda_graphs and self.sliding is None
        # a MoE layer groups tokens by expert on the host (a sync a captured graph cannot replay): no graphs
        if cuda_graphs and not compile and self.device.type == "cuda" and hasattr(self.backend, "capturing") \
                and not cfg.num_experts:
            self.graphs = DecodeGraphs(self.model.forward, self.pool.layers, self.backend, max_num_seqs, max_pages,
                                       block_size, cfg.num_kv_heads, self.device)
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
        kv = self._by_layer(self.layout.views(slab), views)
        hidden = self.model(ids, torch.arange(tokens, device=self.device), kv, meta)
        self.model.logits(hidden[-1:])
        peak = torch.cuda.max_memory_allocated(self.device) - before if cuda else 0
        del slab, hidden, views, kv
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
        if groups:
            own = f", {self.sliding.slab.shape[0]:,} pages of their own" if self.sliding else ""
            span = "chunk" if cfg.chunked else "window"
            text += ": " + " + ".join(f"{g.layers} {g.kind}" + (f" ({span} {g.window}{own})" if g.window else "")
                                      for g in groups)
        if cfg.num_experts:
            text += f", MoE {cfg.num_experts} experts top-{cfg.experts_per_token} on {sum(cfg.moe_layers)} layers"
        return text

    def _by_layer(self, full: list[LayerKV], sliding: list[LayerKV]) -> list[LayerKV]:
        """Each layer's pages in model order: the full layers' from the pool, the sliding ones' from theirs."""
        groups = (iter(full), iter(sliding))
        return [next(groups[bool(self.config.window_of(i))]) for i in range(self.config.num_layers)]

    # ---- requests ------------------------------------------------------------------------------------------
    def add_request(self, prompt: Prompt, params: SamplingParams | None = None, *, request_id: str | None = None,
                    session: str | None = None, tenant: str = "", cache_salt: str = "",
                    classify_reply: Any = None, public_prefix_tokens: int = 0) -> str:
        """Queue a request; returns its id. `session` (an agent conversation) lets the agent-aware policy follow
        it across turns; `tenant` and `cache_salt` partition the prefix cache (different values never share a
        block). `classify_reply(text)` says how the reply ended ('tool_calls' or 'stop') before its blocks are
        released, so the cache policy knows whether a tool call or a person comes next. The first
        `public_prefix_tokens` (whole blocks of them) are named in the public namespace, shared by every tenant (an
        operator's shared system prompt); the blocks after them stay in the tenant's."""
        params = params or SamplingParams()
        params.check()
        matcher = self.grammars.matcher(params.structured_outputs) if params.structured_outputs is not None else None
        return self.admit(self.tokens_of(prompt, params), params, matcher, request_id=request_id, session=session,
                          tenant=tenant, cache_salt=cache_salt, classify_reply=classify_reply,
                          public_prefix_tokens=public_prefix_tokens)

    def admit(self, ids: list[int], params: SamplingParams, matcher: Any = None, *, request_id: str | None = None,
              session: str | None = None, tenant: str = "", cache_salt: str = "", classify_reply: Any = None,
              public_prefix_tokens: int = 0) -> str:
        """Queue a request whose prompt and params `add_request` (or `AsyncLLM`, on its caller's thread)
        checked already, with its grammar's matcher compiled there: nothing is checked or compiled twice."""
        seq_id = next(self._counter)
        rid = str(seq_id) if request_id is None else request_id
        if rid in self._seqs:
            raise ValueError(f"request id {rid!r} is already in use")
        generator = _generator(params.seed, self.device)  # before anything is queued: a refusal leaves no trace
        namespace = namespace_digest(f"{self.namespace}|{tenant}|{cache_salt}")
        public = public_prefix_tokens // self.block_size if tenant or cache_salt else 0
        root = namespace_digest(f"{self.namespace}||") if public else namespace
        seq = EngineSequence.create(seq_id, rid, ids, params, self.ids, root, self.block_size, public,
                                    namespace if public else b"")
        seq.arrival = time.monotonic()
        seq.session = self._sessions(session) if session else -1
        seq.tenant = self._tenants.setdefault(tenant, len(self._tenants))
        seq.classify_reply = classify_reply
        seq.detok = Detokenizer(self.tokenizer, params.stop) if self.tokenizer is not None else None
        seq.matcher = matcher
        try:
            self.scheduler.add(seq)
        except ValueError:
            self._end(seq)
            raise
        self._seqs[rid] = seq
        self._generators[rid] = generator
        if self.tiering is not None:  # adopt what disk/Redis hold of its prefix; fetch it while it waits
            waits = self.tiering.admit(self.cache, self.ids.keys, seq.block_ids)
            if waits:
                seq.ready = lambda: all(f.done() for f in waits)
        return rid

    @functools.cached_property
    def grammars(self) -> Grammars:
        """Structured outputs' grammars over this model's tokenizer (built on first use)."""
        if self.tokenizer is None:
            raise ValueError("structured outputs need the model's tokenizer.json")
        try:
            return Grammars(self.tokenizer.to_json(), self.config.vocab_size, list(self.config.eos_token_ids))
        except ValueError as e:
            raise ValueError(f"structured outputs: the grammar engine cannot read this model's tokenizer ({e})") from None

    def abort(self, request_id: str) -> bool:
        seq = self._seqs.get(request_id)
        if seq is None or seq.status is Status.FINISHED or not self.scheduler.abort(seq.seq_id, time.monotonic()):
            return False
        seq.finish_reason = "abort"
        self._end(seq)
        return True

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_work()

    def close(self) -> None:
        """Write what only GPU and DRAM hold to the disk tier, finish queued offloads and close the stores (the
        disk saves its index): the next engine on the same folder starts warm."""
        if self._closer is not None:
            self._closer()

    def generate(self, prompts: Prompt | list[Prompt], sampling_params: SamplingParams | list[SamplingParams] | None
                 = None) -> list[RequestOutput]:
        """Run prompts to completion, batched; outputs in the order of `prompts`. A prompt is a string, a list
        of token ids, or {"prompt_token_ids": [...]}; a list of those is a batch."""
        batch = [prompts] if isinstance(prompts, str | dict) or _is_token_list(prompts) else list(prompts)
        plist = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(batch)
        if len(plist) != len(batch):
            raise ValueError(f"{len(batch)} prompts but {len(plist)} sampling params")
        rids = [self.add_request(p, sp) for p, sp in zip(batch, plist, strict=True)]
        pending = set(rids)
        done: dict[str, RequestOutput] = {}
        while pending:
            for out in self.step():
                if out.finished and out.request_id in pending:
                    pending.discard(out.request_id)
                    done[out.request_id] = out
        return [done[r] for r in rids]

    def chat(self, messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
             sampling_params: SamplingParams | None = None, **template_kwargs: Any) -> list[RequestOutput]:
        """One conversation (a list of messages) or several, through the model's chat template."""
        if self.tokenizer is None:
            raise ValueError("the model folder has no tokenizer.json: chat needs one")
        convs = [messages] if messages and isinstance(messages[0], dict) else messages
        return self.generate([self.tokenizer.encode_chat(c, **template_kwargs) for c in convs],  # type: ignore[arg-type]
                             sampling_params)

    # ---- one step ------------------------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one step; returns an output for every request that got a token (its new text as `delta`, less
        what may begin a stop string; the final text once finished)."""
        plan = self.scheduler.schedule(time.monotonic())
        self._execute(plan)
        if plan.empty:
            if self.scheduler.waiting and not self.scheduler.running:
                time.sleep(0.001)  # every waiting request's prefix is still in flight from a slow tier
            return []
        t0 = time.perf_counter()
        input_ids, positions, rows, sampling = self._prepare(plan)
        if self.graphs is not None and not plan.prefills and self.graphs.size_for(len(plan.decodes)):
            hidden = self.graphs.run(input_ids, positions, self.meta)
        else:
            hidden = self.model(input_ids, positions, self.kv_layers, self.meta)
        tokens = sample(self.model.logits(hidden[rows]), [s.params for s in sampling],
                        [self._generators[s.request_id] for s in sampling],
                        [s.matcher for s in sampling]) if sampling else []
        for seq, tok in zip(sampling, tokens, strict=True):
            if seq.matcher is not None:
                seq.matcher.consume_token(tok)
            self._append(seq, tok)
        if self.tiering is not None and plan.prefills:  # what recomputing a block costs: the slow-store test
            self.tiering.measure_recompute((time.perf_counter() - t0) / plan.num_tokens * self.block_size)
        for seq in self.scheduler.postprocess(plan, time.monotonic()):
            seq.finish_reason = seq.finish_reason or "length"
            self._end(seq)
        return [self._output(s) for s in sampling]

    def _execute(self, plan: StepPlan) -> None:
        self.pool.execute(plan.ops)
        if self.tiering is not None:  # lost blocks recomputed, named blocks written through to Redis
            self.tiering.repair(plan, self.pool, self.cache, self.block_size)
        if self.sliding is not None:
            self.sliding.execute(plan.ops)
            self.sliding.before_forward(plan, self.scheduler.running)  # type: ignore[arg-type]
        for op in plan.ops:
            if isinstance(op, Allocate) and op.admission:
                self.prefix_query_tokens += op.seq.target
                self.prefix_hit_tokens[: len(op.seq.cached_per_tier)] += op.seq.cached_per_tier
                if not op.seq.preemptions:  # after repair: a lost block's tokens were not served from cache
                    op.seq.prompt_cached = op.seq.cached  # type: ignore[attr-defined]
                    op.seq.prompt_cached_per_tier = op.seq.cached_per_tier.copy()  # type: ignore[attr-defined]
        self._recycle(self.pool.gone + self._unreferenced)
        self.pool.gone, self._unreferenced = [], []
        if self.check_invariants:
            self.pool.check(self.cache, self.scheduler.running)  # type: ignore[arg-type]
            if self.sliding is not None:
                self.sliding.check(self.scheduler.running)  # type: ignore[arg-type]

    def _recycle(self, candidates: list[int]) -> None:
        """Ids no live request names and no tier holds stand for nothing now: their numbers are reused."""
        if not candidates:
            return
        ids = np.unique(np.asarray(candidates, dtype=np.int64))
        ids = ids[ids < self.cache.n_slots]
        free = ids[(self.cache.where[ids] == 0) & (np.asarray(self.ids.refs)[ids] == 0)]
        free = free[[self.ids.keys[i] is not None for i in free.tolist()]] if len(free) else free
        self.cache.forget(free)
        for i in free.tolist():
            self.ids.recycle(i)
        fresh = ids[ids >= self.cache.n_slots]  # never reached the core: nothing to reset there
        for i in fresh.tolist():
            if self.ids.refs[i] == 0 and self.ids.keys[i] is not None:
                self.ids.recycle(i)

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

    def _append(self, seq: EngineSequence, tok: int) -> None:
        seq.tokens.append(tok)  # type: ignore[union-attr]
        p = seq.params
        if (tok in self.config.eos_token_ids and not p.ignore_eos) or tok in p.stop_token_ids:
            seq.stop, seq.finish_reason = True, "stop"
            seq.stop_reason = tok if tok in p.stop_token_ids else None
        elif seq.detok is not None and seq.detok.push(tok) is not None:
            seq.stop, seq.finish_reason, seq.stop_reason = True, "stop", seq.detok.matched
        if seq.stop or seq.generated + 1 >= seq.max_tokens:  # its last token: say how the reply ended
            seq.finish = FINISH_UNKNOWN
            if seq.classify_reply is not None:
                kind = seq.classify_reply(self._text(seq))
                seq.finish = FINISH_TOOL if kind == "tool_calls" else FINISH_END

    def _end(self, seq: EngineSequence) -> None:
        """The request is over: its ids lose this reference (the core released its pins already)."""
        self._unreferenced += self.ids.unref(seq.named)
        seq.named = []
        self._seqs.pop(seq.request_id, None)
        self._generators.pop(seq.request_id, None)

    def _text(self, seq: EngineSequence) -> str:
        """The reply's final text, made once: cut at its stop string, else its tokens decoded whole (once, at
        its end: the stream's pieces came from the incremental detokenizer)."""
        if seq.text is None:
            if seq.detok is None:
                seq.text = ""
            else:
                matched = seq.detok.matched is not None
                seq.text = seq.detok.text if matched else self.tokenizer.decode(self._visible(seq))
        return seq.text

    def _visible(self, seq: EngineSequence) -> list[int]:
        out = seq.output_ids
        if seq.finish_reason == "stop" and out and (out[-1] in self.config.eos_token_ids
                                                    or out[-1] in seq.params.stop_token_ids):
            return out[:-1]  # the stop token is not part of the text
        return out

    def _output(self, seq: EngineSequence) -> RequestOutput:
        finished = seq.status is Status.FINISHED
        text = self._text(seq) if finished else ""
        completion = CompletionOutput(0, text, self._visible(seq) if finished else seq.output_ids,
                                      seq.finish_reason if finished else None, seq.stop_reason if finished else None,
                                      self._delta(seq, text, finished))
        per_tier = {n: int(x) for n, x in zip(self.tier_names, seq.prompt_cached_per_tier, strict=False)}
        return RequestOutput(seq.request_id, None, seq.tokens[: seq.prompt_len], [completion], finished,  # type: ignore[index]
                             seq.prompt_cached, per_tier, seq.preemptions)

    @staticmethod
    def _delta(seq: EngineSequence, text: str, finished: bool) -> str:
        """The text new this step, as the detokenizer lets a stream show it; at the end, the rest of the final
        text (what the stream showed is its beginning)."""
        if seq.detok is None:
            return ""
        return text[seq.detok.shown_chars :] if finished else seq.detok.take()

    def tokens_of(self, prompt: Prompt, params: SamplingParams) -> list[int]:
        """The prompt's token ids, checked: not empty, room for max_tokens within the model's context, biases
        on tokens the model has.
        Thread-safe (the tokenizer is), so the engine loop's callers check at once, on their own thread."""
        ids = self._encode(prompt)
        if not ids:
            raise ValueError("empty prompt")
        limit = self.config.max_position_embeddings
        if len(ids) + params.max_tokens > limit:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the model's "
                             f"context of {limit} tokens")
        if not all(0 <= t < self.config.vocab_size for t, _ in params.logit_bias):
            raise ValueError(f"logit_bias: token ids must be in [0, {self.config.vocab_size})")
        return ids

    def _encode(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, dict):
            if "prompt_token_ids" in prompt:
                return [int(t) for t in prompt["prompt_token_ids"]]
            prompt = prompt.get("prompt", "")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("the model folder has no tokenizer.json: pass token ids")
            return self.tokenizer.encode(prompt)
        return [int(t) for t in prompt]


def _is_token_list(p: Any) -> bool:
    return isinstance(p, list) and bool(p) and isinstance(p[0], int | np.integer)


def _auto_codec(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}[dtype]


def _tokenizer(model_dir: str) -> Any:
    from agentkv.engine.tokenizer import Tokenizer

    try:
        return Tokenizer(model_dir)
    except FileNotFoundError:
        return None


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g


__all__ = ["LLM", "RequestOutput", "SamplingParams"]


def _one_window(cfg: Any) -> int:
    """The sliding layers' window (0: none); the page groups serve one window size so far."""
    windows = {w for w in cfg.layer_windows if w}
    if len(windows) > 1:
        raise ValueError(f"config.json: sliding windows of {sorted(windows)} tokens: one size is supported")
    if windows and all(cfg.layer_windows):
        raise ValueError("config.json: every layer slides: a model needs one full-attention layer here")
    return windows.pop() if windows else 0
