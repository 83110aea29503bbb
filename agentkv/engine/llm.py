"""`LLM(model_dir).generate(prompts, SamplingParams)`: the engine loop.

Each step: the shared scheduler forms a batch over the KV cache policy core; the block pool performs the core's
moves and extends block tables; the model runs the flattened batch over paged KV; the sampler picks tokens;
the scheduler accounts the step (naming full blocks by chained hash, so later prompts that share the prefix
skip its prefill). A prompt's cached tokens are reported with its output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from agentkv.engine.blocks import BlockPool
from agentkv.engine.sampler import sample
from agentkv.engine.sequence import EngineSequence, SamplingParams
from agentkv.kernels.attention import AttentionMetadata, SeqAttention
from agentkv.kvcache.block_hash import salt_hash
from agentkv.kvcache.cache import KVCache
from agentkv.kvcache.ids import BlockIds
from agentkv.kvcache.policies import make_policy
from agentkv.kvcache.tiers import TierSpec
from agentkv.model.llama import LlamaForCausalLM
from agentkv.model.loader import load_model
from agentkv.scheduler import Batch, Scheduler, SchedulerConfig


@dataclass(slots=True)
class RequestOutput:
    request_id: int
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop", "length" or "abort"
    cached_tokens: int  # prompt tokens served from the prefix cache (at its last admission)
    cached_tokens_per_tier: list[int]
    preemptions: int


class LLM:
    def __init__(
        self,
        model_dir: str | None = None,
        dtype: str | None = None,
        device: str | None = None,
        kv_cache_bytes: int | None = None,
        host_kv_bytes: int = 0,
        block_size: int = 16,
        max_batched_tokens: int = 2048,
        max_num_seqs: int = 64,
        prefix_cache: bool = True,
        policy: str = "lru",
        gpu_memory_utilization: float = 0.9,
        compile: bool = False,
        model: LlamaForCausalLM | None = None,
    ) -> None:
        """Load `model_dir` (HF layout), or serve an already-built `model` (benchmarks with random weights)."""
        if (model_dir is None) == (model is None):
            raise ValueError("give exactly one of model_dir and model")
        if model is not None:
            self.model = model.eval()
            self.device = next(model.parameters()).device
        else:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self.model = load_model(model_dir, dtype, self.device)  # type: ignore[arg-type]
        cfg = self.model.config
        self.config = cfg
        self.dtype = next(self.model.parameters()).dtype
        self.tokenizer: Any = None
        if model_dir is not None:
            from agentkv.engine.tokenizer import Tokenizer

            try:
                self.tokenizer = Tokenizer(model_dir)
            except FileNotFoundError:
                self.tokenizer = None
        elem = torch.empty((), dtype=self.dtype).element_size()
        block_bytes = cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * block_size * elem
        if kv_cache_bytes is None:
            if self.device.type == "cuda":
                free, _ = torch.cuda.mem_get_info(self.device)
                kv_cache_bytes = int(free * gpu_memory_utilization) - 512 * 2**20  # leave room for activations
            else:
                kv_cache_bytes = 512 * 2**20
        num_blocks = kv_cache_bytes // block_bytes
        if num_blocks < 2:
            raise ValueError(f"KV budget {kv_cache_bytes} bytes holds {num_blocks} blocks of {block_bytes} bytes")
        self.pool = BlockPool(cfg.num_layers, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim,
                              self.dtype, self.device)
        tiers = [TierSpec("gpu", num_blocks * block_bytes, block_bytes)]
        if host_kv_bytes:
            tiers.append(TierSpec("dram", host_kv_bytes, block_bytes))
        cache = KVCache(tiers, make_policy(policy, block_size=block_size), evict_ahead=max(num_blocks // 200, 0))
        self.scheduler = Scheduler(SchedulerConfig(block_size, max_batched_tokens, max_num_seqs, prefix_cache), cache,
                                   on_commit=lambda seq, first, ids: self.pool.name(seq, first, ids.tolist()),
                                   on_release=self.pool.drop_sequence)
        self.block_size = block_size
        self.ids = BlockIds()
        self.salt = salt_hash(f"{model_dir or id(self.model)}|{self.dtype}")  # other models/dtypes never match
        self._next_id = 0
        self._generators: dict[int, torch.Generator | None] = {}
        self._seqs: dict[int, EngineSequence] = {}
        if compile:  # fuses the per-token work; the attention backend's per-sequence loop stays eager
            self.model.forward = torch.compile(self.model.forward, dynamic=True)  # type: ignore[method-assign]

    # ---- requests ------------------------------------------------------------------------------------------
    def add_request(self, prompt: str | list[int], params: SamplingParams | None = None) -> int:
        params = params or SamplingParams()
        ids = self._encode(prompt)
        if not ids:
            raise ValueError("empty prompt")
        if len(ids) + params.max_tokens > self.config.max_position_embeddings:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the model's "
                             f"context of {self.config.max_position_embeddings}")
        seq = EngineSequence.create(self._next_id, ids, params, self.ids, self.salt, self.block_size)
        seq.arrival = time.monotonic()
        self._next_id += 1
        self._generators[seq.seq_id] = _generator(params.seed, self.device)
        self.scheduler.add(seq)
        self._seqs[seq.seq_id] = seq
        return seq.seq_id

    def abort(self, request_id: int) -> bool:
        seq = self._seqs.get(request_id)
        if seq is None or not self.scheduler.abort(request_id, time.monotonic()):
            return False
        seq.finish_reason = "abort"
        return True

    def generate(self, prompts: list[str | list[int]] | str, params: SamplingParams | list[SamplingParams] | None = None,
                 ) -> list[RequestOutput]:
        """Run prompts to completion, batched; outputs in the order of `prompts`."""
        single = isinstance(prompts, str)
        prompts = [prompts] if single else list(prompts)  # type: ignore[list-item]
        plist = params if isinstance(params, list) else [params or SamplingParams()] * len(prompts)
        if len(plist) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(plist)} sampling params")
        rids = [self.add_request(p, sp) for p, sp in zip(prompts, plist, strict=True)]
        pending = set(rids)
        while pending:
            for seq in self.step():
                pending.discard(seq.seq_id)
        return [self._output(self._seqs.pop(r)) for r in rids]

    def chat(self, conversations: list[list[dict[str, Any]]], params: SamplingParams | None = None,
             ) -> list[RequestOutput]:
        if self.tokenizer is None:
            raise ValueError("the model folder has no tokenizer.json: chat needs one")
        return self.generate([self.tokenizer.encode_chat(c) for c in conversations], params)

    # ---- one step ------------------------------------------------------------------------------------------
    def step(self) -> list[EngineSequence]:
        now = time.monotonic()
        batch = self.scheduler.schedule(now)  # preempted sequences' blocks were released to the pool already
        self.pool.apply(batch.moves)
        if batch.empty:
            return []
        for seq in [c.seq for c in batch.prefills] + batch.decodes:
            self.pool.sync(seq, seq.block_range(0, seq.committed).tolist())
        input_ids, positions, meta, rows, sampling = self._prepare(batch)
        hidden = self.model(input_ids, positions, self.pool.layer_caches(), meta)
        tokens = sample(self.model.logits(hidden[rows]), [s.params for s in sampling],
                        [self._generators[s.seq_id] for s in sampling]) if sampling else []
        for seq, tok in zip(sampling, tokens, strict=True):
            self._append(seq, tok)
        finished = self.scheduler.postprocess(batch, time.monotonic())  # names blocks, releases the finished
        self.pool.apply(self.scheduler.commit_moves)
        self.scheduler.commit_moves.clear()
        for seq in finished:
            seq.finish_reason = seq.finish_reason or "length"
        return finished  # type: ignore[return-value]

    def _prepare(self, batch: Batch):
        dev = self.device
        tokens: list[int] = []
        positions: list[int] = []
        slots: list[torch.Tensor] = []
        seqs: list[SeqAttention] = []
        rows: list[int] = []
        sampling: list[EngineSequence] = []
        for c in batch.prefills:
            seq = c.seq
            end = c.start + c.n
            seqs.append(SeqAttention(len(tokens), c.n, self.pool.slots(seq, 0, end)))
            slots.append(self.pool.slots(seq, c.start, end))
            tokens += seq.tokens[c.start : end]
            positions += range(c.start, end)
            if end == seq.target:
                rows.append(len(tokens) - 1)
                sampling.append(seq)  # type: ignore[arg-type]
        for seq in batch.decodes:
            p = seq.computed
            seqs.append(SeqAttention(len(tokens), 1, self.pool.slots(seq, 0, p + 1)))
            slots.append(self.pool.slots(seq, p, p + 1))
            tokens.append(seq.tokens[p])
            positions.append(p)
            rows.append(len(tokens) - 1)
            sampling.append(seq)  # type: ignore[arg-type]
        meta = AttentionMetadata(torch.cat(slots), seqs)
        return (torch.tensor(tokens, dtype=torch.long, device=dev), torch.tensor(positions, dtype=torch.long, device=dev),
                meta, torch.tensor(rows, dtype=torch.long, device=dev), sampling)

    def _append(self, seq: EngineSequence, tok: int) -> None:
        seq.tokens.append(tok)  # type: ignore[union-attr]
        p = seq.params
        if (tok in self.config.eos_token_ids and not p.ignore_eos) or tok in p.stop_token_ids:
            seq.stop, seq.finish_reason = True, "stop"
        elif p.stop and self.tokenizer is not None:
            text = self.tokenizer.decode(seq.output_ids)
            hit = min((i for i in (text.find(s) for s in p.stop) if i >= 0), default=-1)
            if hit >= 0:
                seq.stop, seq.finish_reason, seq.text = True, "stop", text[:hit]

    def _output(self, seq: EngineSequence) -> RequestOutput:
        out = seq.output_ids
        if seq.finish_reason == "stop" and out and (out[-1] in self.config.eos_token_ids or out[-1] in seq.params.stop_token_ids):
            out = out[:-1]  # the stop token is not part of the text
        text = seq.text or (self.tokenizer.decode(out) if self.tokenizer is not None else "")
        return RequestOutput(seq.seq_id, seq.tokens[: seq.prompt_len], out, text, seq.finish_reason,  # type: ignore[index]
                             seq.cached, [int(x) for x in seq.cached_per_tier], seq.preemptions)

    def _encode(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("the model folder has no tokenizer.json: pass token ids")
            return self.tokenizer.encode(prompt)
        return [int(t) for t in prompt]


def _generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(seed)
    return g
