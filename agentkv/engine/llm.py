"""`LLM(model=DIR).generate(prompts, sampling_params)`: the engine loop, one plan per step.

Each step: the shared scheduler returns one `StepPlan` (the policy core's tier moves, pages allocated, named
and freed, and the batch); the page pool carries its operations out, in order; the device runner
(engine/runner.py: model, pages, kernels, CUDA graphs) runs the flattened batch over paged KV and samples; the
loop appends the tokens, checks the stops and makes outputs; the scheduler accounts the step (naming full
blocks, so later prompts that share the prefix skip their prefill).
"""

from __future__ import annotations

import functools
import itertools
import time
import weakref
from typing import Any

import numpy as np

from agentkv.engine.detokenizer import Detokenizer
from agentkv.engine.grammar import Grammars
from agentkv.engine.outputs import CompletionOutput, RequestOutput
from agentkv.engine.runner import ModelRunner
from agentkv.engine.sequence import EngineSequence, SamplingParams
from agentkv.engine.sessions import MAX_SESSIONS, SessionIds
from agentkv.engine.tiering import Tiering
from agentkv.kvcache.block_hash import namespace_digest
from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.ids import BlockIds
from agentkv.kvcache.policies import make_policy
from agentkv.kvcache.policy import Policy
from agentkv.kvcache.tiers import TierSpec
from agentkv.model.llama import LlamaForCausalLM
from agentkv.scheduler import Allocate, Scheduler, SchedulerConfig, Status, StepPlan
from agentkv.storage.host import HostSlab
from agentkv.workload.trace import FINISH_END, FINISH_TOOL

Prompt = str | list[int] | dict[str, Any]
REPLY_KINDS = {"tool_calls": FINISH_TOOL, "stop": FINISH_END}  # how a reply ended, in OpenAI's finish reasons


def _runner_part(name: str) -> property:
    return property(lambda self: getattr(self.runner, name), doc=f"the device runner's `{name}`")


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
        block_size: int | None = None,
        max_num_batched_tokens: int = 2048,
        max_num_seqs: int = 64,
        enable_prefix_caching: bool = True,
        policy: str | Policy = "lru",
        compile: bool = False,
        check_invariants: bool = False,
        attention_backend: str | None = None,
        cuda_graphs: bool = True,
        max_sessions: int = MAX_SESSIONS,
        state_snapshots: int | None = None,
    ) -> None:
        """`model`: a Hugging Face checkpoint folder, or an already-built module (benchmarks, random weights).
        kv_codec: how KV pages are stored ('auto': the model's dtype). kv_tiers: tiers below the GPU,
        e.g. "dram=8GiB,disk=100GiB@/mnt/nvme/kv,redis=20GiB@redis://host:6379" (see engine/tiering.py).
        block_size: tokens per KV block (None: 16, or the least multiple of DeepSeek-V4's compression ratios
        above it; `block_size_why` says which).
        policy: a policy's name (lru, lfu, cost, agent) or a `Policy` of your own.
        check_invariants: compare the policy core's accounts with the pages after every step (tests).
        attention_backend: 'auto' (Triton kernels on CUDA, the torch reference elsewhere), 'torch' or 'triton';
        None keeps a given module's own backend. cuda_graphs: capture decode steps (CUDA, Triton backend).
        max_sessions: sessions the policy follows at once (the least recently seen beyond it are forgotten).
        state_snapshots: linear layers' state snapshots kept for hits (None: a quarter of the KV budget at most)."""
        self.ids = BlockIds()
        self.runner = runner = ModelRunner(
            model, self.ids, dtype=dtype, device=device, kv_codec=kv_codec, kv_cache_bytes=kv_cache_bytes,
            gpu_memory_utilization=gpu_memory_utilization, block_size=block_size, state_snapshots=state_snapshots,
            max_num_batched_tokens=max_num_batched_tokens, max_num_seqs=max_num_seqs, attention_backend=attention_backend)
        self.config, self.block_size, self.block_size_why = runner.config, runner.block.tokens, runner.block.why
        self.tokenizer: Any = _tokenizer(model) if isinstance(model, str) else None
        tiers, stores = self._tiers(host_kv_bytes, kv_tiers)
        self.tier_names = [t.name for t in tiers]
        self._schedule(tiers, policy, SchedulerConfig(self.block_size, max_num_batched_tokens, max_num_seqs,
                                                      enable_prefix_caching))
        runner.build_pool(stores, compile=compile, cuda_graphs=cuda_graphs, policy=self.cache.policy)
        # an engine dropped, or a process exiting, without close() still flushes and closes its tiers (once)
        self._closer = weakref.finalize(self, self.tiering.close, runner.pool, self.cache) if self.tiering else None
        self.namespace = f"{runner.name}|{runner.codec.name}|bs{self.block_size}"  # no block across models
        self.check_invariants = check_invariants
        self._counter = itertools.count()
        self._seqs: dict[str, EngineSequence] = {}
        self._sessions = SessionIds(self.cache.policy.forget_session, max_sessions)
        self._tenants: dict[str, int] = {"": 0}
        self._unreferenced: list[int] = []  # ids whose last request ended: recycled if no tier holds them
        self.prefix_query_tokens = 0
        self.prefix_hit_tokens = np.zeros(len(tiers), dtype=np.int64)

    # the runner's parts, where callers (tests, the start-up line, benchmarks) reach them on the engine
    model = _runner_part("model")
    device = _runner_part("device")
    dtype = _runner_part("dtype")
    codec = _runner_part("codec")
    layout = _runner_part("layout")
    sliding = _runner_part("sliding")
    states = _runner_part("states")
    pool = _runner_part("pool")
    backend = _runner_part("backend")
    layers_text = _runner_part("layers_text")  # a method: llm.layers_text()

    def _schedule(self, tiers: list[TierSpec], policy: str | Policy, config: SchedulerConfig) -> None:
        """The policy core over the tiers, and the scheduler that plans each step with it."""
        self.cache = KVCache(tiers, policy if isinstance(policy, Policy) else
                             make_policy(policy, model=self.runner.spec, block_size=config.block_size))
        self.scheduler = Scheduler(config, self.cache)
        if self.tiering is not None:
            self.scheduler.at_hand = functools.partial(self.tiering.at_hand, self.cache, self.ids.keys)

    def _tiers(self, host_kv_bytes: int, kv_tiers: str | None) -> tuple[list[TierSpec], list]:
        """The GPU tier of the runner's pages and the tiers below it, with their stores."""
        r = self.runner
        tiers = [TierSpec("gpu", r.num_pages * r.page_bytes, r.page_bytes)]
        stores: list = []
        if host_kv_bytes:
            tiers.append(TierSpec("dram", host_kv_bytes, r.page_bytes))
            stores.append(HostSlab(tiers[-1].capacity_blocks, r.page_bytes, pin=r.device.type == "cuda"))
        self.tiering = None
        if kv_tiers:
            if host_kv_bytes:
                raise ValueError("give host_kv_bytes or kv_tiers (with a dram tier), not both")
            self.tiering = Tiering(kv_tiers, r.page_bytes, self.block_size, r.device.type == "cuda", r.sliding)
            tiers += self.tiering.tiers
            stores += self.tiering.stores
        return tiers, stores

    # ---- requests ------------------------------------------------------------------------------------------
    def add_request(self, prompt: Prompt, params: SamplingParams | None = None, *, request_id: str | None = None,
                    session: str | None = None, tenant: str = "", cache_salt: str = "", public_prefix_tokens: int = 0,
                    ) -> str:
        """Queue a request; returns its id. `session` (an agent conversation) lets the agent-aware policy follow
        it across turns; `tenant` and `cache_salt` partition the prefix cache (different values never share a
        block); `classify` tells the policy afterwards how its reply ended. The first `public_prefix_tokens` (whole
        blocks) are named in the public namespace, shared by every tenant (an operator's system prompt)."""
        params = params or SamplingParams()
        params.check()
        matcher = self.grammars.matcher(params.structured_outputs) if params.structured_outputs is not None else None
        return self.admit(self.tokens_of(prompt, params), params, matcher, request_id=request_id, session=session,
                          tenant=tenant, cache_salt=cache_salt, public_prefix_tokens=public_prefix_tokens)

    def admit(self, ids: list[int], params: SamplingParams, matcher: Any = None, *, request_id: str | None = None,
              session: str | None = None, tenant: str = "", cache_salt: str = "", public_prefix_tokens: int = 0) -> str:
        """Queue a request whose prompt and params `add_request` (or `AsyncLLM`, on its caller's thread)
        checked already, with its grammar's matcher compiled there: nothing is checked or compiled twice."""
        seq_id = next(self._counter)
        rid = str(seq_id) if request_id is None else request_id
        if rid in self._seqs:
            raise ValueError(f"request id {rid!r} is already in use")
        generator = self.runner.generator(params.seed)  # before anything is queued: a refusal leaves no trace
        namespace = namespace_digest(f"{self.namespace}|{tenant}|{cache_salt}")
        public = public_prefix_tokens // self.block_size if tenant or cache_salt else 0
        root = namespace_digest(f"{self.namespace}||") if public else namespace
        seq = EngineSequence.create(seq_id, rid, ids, params, self.ids, root, self.block_size, public,
                                    namespace if public else b"")
        seq.arrival = time.monotonic()
        seq.session = self._sessions(session) if session else -1
        seq.tenant = self._tenants.setdefault(tenant, len(self._tenants))
        seq.detok = Detokenizer(self.tokenizer, params.stop) if self.tokenizer is not None else None
        seq.matcher = matcher
        seq.generator = generator
        try:
            self.scheduler.add(seq)
        except ValueError:
            self._end(seq)
            raise
        self._seqs[rid] = seq
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
        sampling, tokens = self.runner.run(plan)
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
        pool = self.runner.pool
        pool.execute(plan.ops)
        if self.tiering is not None:  # lost blocks recomputed, named blocks written through to Redis
            self.tiering.repair(plan, pool, self.cache, self.block_size)
        self.runner.before_forward(plan, self.scheduler.running)  # type: ignore[arg-type]
        for op in plan.ops:
            if isinstance(op, Allocate) and op.admission:
                self.prefix_query_tokens += op.seq.target
                self.prefix_hit_tokens[: len(op.seq.cached_per_tier)] += op.seq.cached_per_tier
                if not op.seq.preemptions:  # after repair: a lost block's tokens were not served from cache
                    op.seq.prompt_cached = op.seq.cached  # type: ignore[attr-defined]
                    op.seq.prompt_cached_per_tier = op.seq.cached_per_tier.copy()  # type: ignore[attr-defined]
        self._recycle(pool.gone + self._unreferenced)
        pool.gone, self._unreferenced = [], []
        if self.check_invariants:
            self.runner.check(self.cache, self.scheduler.running)  # type: ignore[arg-type]

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

    def _append(self, seq: EngineSequence, tok: int) -> None:
        seq.tokens.append(tok)  # type: ignore[union-attr]
        p = seq.params
        if (tok in self.config.eos_token_ids and not p.ignore_eos) or tok in p.stop_token_ids:
            seq.stop, seq.finish_reason = True, "stop"
            seq.stop_reason = tok if tok in p.stop_token_ids else None
        elif seq.detok is not None and seq.detok.push(tok) is not None:
            seq.stop, seq.finish_reason, seq.stop_reason = True, "stop", seq.detok.matched

    def classify(self, session: str, kind: str) -> None:
        """How `session`'s last reply ended ('tool_calls' or 'stop'), from whoever parsed its tool calls (the server,
        as it streamed them) after its blocks were released; a session no longer followed is ignored."""
        if kind not in REPLY_KINDS:
            raise ValueError(f"kind must be one of {', '.join(REPLY_KINDS)}, got {kind!r}")
        number = self._sessions.get(session)
        if number is not None:
            self.cache.policy.classify(number, REPLY_KINDS[kind])

    def _end(self, seq: EngineSequence) -> None:
        """The request is over: its ids lose this reference (the core released its pins already)."""
        self._unreferenced += self.ids.unref(seq.named)
        seq.named = []
        self._seqs.pop(seq.request_id, None)

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


def _tokenizer(model_dir: str) -> Any:
    from agentkv.engine.tokenizer import Tokenizer

    try:
        return Tokenizer(model_dir)
    except FileNotFoundError:
        return None


__all__ = ["LLM", "RequestOutput", "SamplingParams"]

