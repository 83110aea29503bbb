"""Tiny random checkpoints written by Hugging Face transformers (sharded safetensors), with a real tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

WORDS = ["the", "agent", "reads", "a", "file", "and", "calls", "a", "tool", "then", "writes", "code", "tests", "pass", "fail", "again", "fix", "bug", "hello", "world", "python", "rust", "go", "yes", "no", "stop", "done"]
SPECIAL = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "[UNK]"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|> {{ m['role'] }} <|end_header_id|> "
    "{{ m['content'] }} <|eot_id|> {% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|> assistant <|end_header_id|> {% endif %}"
)
VOCAB = 128


def write_tokenizer(folder: Path) -> dict[str, int]:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {t: i for i, t in enumerate(SPECIAL + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIAL)
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", 0)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "chat_template": CHAT_TEMPLATE}))
    return vocab


def write_checkpoint(folder: Path, family: str, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    if family in MULTIMODAL:
        return write_multimodal(folder, family, seed)
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  bos_token_id=0, eos_token_id=1)
    if family == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        model = Qwen2ForCausalLM(Qwen2Config(**common))
    elif family == "mistral":
        from transformers import MistralConfig, MistralForCausalLM

        model = MistralForCausalLM(MistralConfig(**common, sliding_window=None))
    elif family == "llama3":
        cfg = LlamaConfig(**common, rope_theta=500000.0, rope_scaling={
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256})
        model = LlamaForCausalLM(cfg)
    elif family == "qwen3":
        model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=32, tie_word_embeddings=True))
    elif family == "qwen3_moe":  # layer 1 dense (mlp_only_layers), layers 0 and 2 routed: 8 experts, top 2
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

        model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**{**common, "num_hidden_layers": 3}, head_dim=32,
                                                   moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
                                                   norm_topk_prob=True, mlp_only_layers=[1]))
    elif family == "gemma3":  # 5 sliding (window 8) : 1 global, as Gemma 3's pattern
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        model = Gemma3ForCausalLM(Gemma3TextConfig(**{**common, "num_hidden_layers": 6}, head_dim=32,
                                                   sliding_window=8, query_pre_attn_scalar=24,
                                                   rope_local_base_freq=100.0))
        jitter(model)
    elif family == "gpt_oss":  # sliding (window 8) and full alternating, sinks, 8 experts top 2, YaRN
        from transformers import GptOssConfig, GptOssForCausalLM

        model = GptOssForCausalLM(GptOssConfig(**{**common, "num_hidden_layers": 4, "intermediate_size": 32},
                                               head_dim=16, num_local_experts=8, num_experts_per_tok=2,
                                               sliding_window=8))
        jitter(model)
    elif family == "llama4":  # chunks of 8 on 3 layers of 4 (NoPE on the 4th), MoE every 2nd layer
        from transformers import Llama4ForCausalLM, Llama4TextConfig

        model = Llama4ForCausalLM(Llama4TextConfig(
            **{**common, "num_hidden_layers": 4, "intermediate_size": 32}, intermediate_size_mlp=96, head_dim=16,
            num_local_experts=4, num_experts_per_tok=2, attention_chunk_size=8, interleave_moe_layer_step=2,
            floor_scale=16, attn_scale=0.5, rope_parameters={"rope_type": "default", "rope_theta": 500000.0}))
        jitter(model)
    elif family == "qwen3_next":  # 3 gated DeltaNet : 1 gated full attention, MoE with a shared expert
        from transformers import Qwen3NextConfig, Qwen3NextForCausalLM

        model = Qwen3NextForCausalLM(Qwen3NextConfig(
            **{**common, "num_hidden_layers": 4, "intermediate_size": 96}, head_dim=32, linear_num_key_heads=2,
            linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16, moe_intermediate_size=32,
            shared_expert_intermediate_size=48, num_experts=8, num_experts_per_tok=2, mlp_only_layers=[1]))
        jitter(model)
    elif family in ("deepseek_v2", "deepseek_v3"):
        model = deepseek(common, family)
    elif family == "deepseek_v4":  # index_topk 64: every entry of these prompts selected (the engine's fp4 keys
        model = deepseek_v4(index_topk=64)  # cannot change the output); blocks of 16 (a multiple of its ratios)
    else:
        raise ValueError(family)
    folder.mkdir(parents=True, exist_ok=True)
    model.float().eval().save_pretrained(str(folder), max_shard_size="60KB")
    write_tokenizer(folder)
    return folder


MULTIMODAL = {"gemma3_vision": "gemma3", "llama4_vision": "llama4"}  # the published folders' layout, tiny


def write_multimodal(folder: Path, family: str, seed: int) -> Path:
    """A ConditionalGeneration folder (nested text_config, a vision tower and projector beside the text model)
    whose text model is `write_checkpoint`'s for the same family and seed, so its text outputs are that one's."""
    from transformers import (
        AutoConfig,
        AutoModelForCausalLM,
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Llama4Config,
        Llama4ForConditionalGeneration,
    )

    text_dir = write_checkpoint(folder.with_name(folder.name + "-text"), MULTIMODAL[family], seed)
    text = AutoConfig.from_pretrained(str(text_dir)).to_dict()
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                  patch_size=14)
    if family == "gemma3_vision":
        model = Gemma3ForConditionalGeneration(Gemma3Config(
            text_config=text, vision_config=vision, mm_tokens_per_image=4, image_token_index=VOCAB - 1,
            boi_token_index=VOCAB - 3, eoi_token_index=VOCAB - 2))
    else:
        model = Llama4ForConditionalGeneration(Llama4Config(text_config=text, vision_config={
            **vision, "vision_output_dim": 32, "projector_input_dim": 32, "projector_output_dim": 64}))
    jitter(model)
    source = AutoModelForCausalLM.from_pretrained(str(text_dir), dtype=torch.float32)
    with torch.no_grad():  # Gemma 3 nests the text body (its head beside it); Llama 4 the whole ForCausalLM
        if family == "gemma3_vision":
            model.model.language_model.load_state_dict(source.model.state_dict())
            model.lm_head.weight.copy_(source.lm_head.weight)
        else:
            model.language_model.load_state_dict(source.state_dict())
    model.float().eval().save_pretrained(str(folder), max_shard_size="60KB")
    write_tokenizer(folder)
    return folder


def deepseek(common: dict, family: str):
    """MLA (latent 32, RoPE key 16, no-RoPE key 32, value 24, low-rank queries), YaRN with DeepSeek's mscales,
    layer 0 dense, layers 1-2 MoE: 8 experts in 4 groups, top 2 groups, top-2, a shared expert; V3's sigmoid
    router with its bias, or V2's softmax one (group-limited greedy). The router's weights (and bias) are made
    large enough that its choices are not near-ties."""
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

    v3 = family == "deepseek_v3"
    config, model_class = (DeepseekV3Config, DeepseekV3ForCausalLM) if v3 else \
        (DeepseekV2Config, DeepseekV2ForCausalLM)
    routing = {} if v3 else {"topk_method": "group_limited_greedy"}
    model = model_class(config(
        **{**common, "num_hidden_layers": 3, "num_key_value_heads": 4}, moe_intermediate_size=32,
        kv_lora_rank=32, q_lora_rank=48, qk_rope_head_dim=16, qk_nope_head_dim=32, v_head_dim=24,
        n_routed_experts=8, n_group=4, topk_group=2, num_experts_per_tok=2, n_shared_experts=1,
        routed_scaling_factor=2.5, first_k_dense_replace=1, **routing, rope_parameters={
            "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 1024,
            "mscale": 1.0, "mscale_all_dim": 0.7, "beta_fast": 32, "beta_slow": 1}))
    jitter(model)
    with torch.no_grad():
        for layer in model.model.layers[1:]:
            layer.mlp.gate.weight.normal_(0, 0.5)
            if v3:
                layer.mlp.gate.e_score_correction_bias.normal_(0, 0.5)
    return model


V4_KINDS = ["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention",
            "compressed_sparse_attention"]


def deepseek_v4(index_topk: int, hca_ratio: int = 16):
    """DeepSeek-V4: a sliding layer, two CSA layers (an entry per 4 tokens, a lightning indexer keeping
    `index_topk`) and an HCA layer (per `hca_ratio`), window 8, mHC over 4 streams, a hash-routed MoE layer then bias-routed
    ones; every constant-initialised part (norms, sinks, gate biases, mHC bases, the compressors'
    slot biases, the hash table) made random, so the test sees each of them."""
    from transformers import DeepseekV4Config, DeepseekV4ForCausalLM

    cfg = DeepseekV4Config(
        vocab_size=VOCAB, hidden_size=64, moe_intermediate_size=32, num_hidden_layers=4, num_attention_heads=4,
        head_dim=32, q_lora_rank=32, partial_rotary_factor=0.25, num_experts_per_tok=2, n_routed_experts=8,
        n_shared_experts=1, layer_types=V4_KINDS, mlp_layer_types=["hash_moe", "moe", "moe", "moe"],
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": hca_ratio}, sliding_window=8,
        o_groups=2, o_lora_rank=16, index_n_heads=8, index_head_dim=16, index_topk=index_topk, hc_mult=4,
        max_position_embeddings=4096, bos_token_id=0, eos_token_id=1)
    model = DeepseekV4ForCausalLM(cfg)
    jitter(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("position_bias", "gate.weight")):  # slot biases; routers away from near-ties
                p.normal_(0, 0.5)
        model.model.layers[0].mlp.gate.tid2eid.copy_(torch.stack([torch.randperm(8)[:2] for _ in range(VOCAB)]))
    return model


def jitter(model) -> None:
    """Norm weights, biases and sinks start as constants (0 or 1): made random so a test sees them."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.3)


# every family `write_checkpoint` writes, one line each (the levers' per-family tests run over all of them)
EVERY_FAMILY = [
    "llama3",
    "qwen2",
    "qwen3",
    "mistral",
    "qwen3_moe",
    "gemma3",
    "gpt_oss",
    "llama4",
    *MULTIMODAL,
    "deepseek_v2",
    "deepseek_v3",
    "qwen3_next",
]


@pytest.fixture(scope="session", params=["llama3", "qwen3", "qwen3_moe", "gemma3", "gpt_oss", "llama4", *MULTIMODAL])
def checkpoint(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, write_checkpoint(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("llama3-only"), "llama3", seed=1)


def hf_model(folder: Path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    multimodal = hasattr(AutoConfig.from_pretrained(str(folder)), "vision_config")
    auto = AutoModelForImageTextToText if multimodal else AutoModelForCausalLM
    return auto.from_pretrained(str(folder), dtype=torch.float32).eval()


def kv_eval_and_transformers_ppl(folder: Path, block_size: int = 16):
    """kv-eval of fp8 on 120 random words (2 windows of 48 tokens, chunks of 20) and the perplexity
    transformers scores on the same windows: (the eval's results, transformers' perplexity)."""
    import math

    from agentkv.engine.tokenizer import Tokenizer
    from agentkv.evaluate.codecs import evaluate

    g = torch.Generator().manual_seed(1)
    text = " ".join(WORDS[i] for i in torch.randint(0, len(WORDS), (120,), generator=g).tolist())
    result = evaluate(str(folder), ["fp8"], text, "t", context=48, windows=2, chunk=20, block_size=block_size)
    ids = Tokenizer(str(folder)).encode(text)
    hf, nll = hf_model(folder), 0.0
    for w in range(2):
        x = torch.tensor(ids[w * 48 : (w + 1) * 48])[None]
        with torch.no_grad():
            nll += float(hf(input_ids=x, labels=x).loss) * 47
    return result.results, math.exp(nll / 94)


def prompts(n: int, seed: int = 0, lo: int = 5, hi: int = 80) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(lo, hi, (n,), generator=g).tolist()
    return [torch.randint(2, VOCAB, (k,), generator=g).tolist() for k in lengths]


@pytest.fixture(scope="session", params=["qwen2", "mistral"])
def other_family(request, tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp(request.param), request.param)


CHAT_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_ADDED = ["<tool_call>", "</tool_call>", "<think>", "</think>"]  # as Qwen's: added, not special
CHAT_REPLY = "I read it."
CLOSERS = ['"', "}", "]", "0", "true"]  # after EOS, what the head prefers: short JSON under a grammar


def tokenizer_corpus() -> list[str]:
    """Python's own standard library (asyncio, email, http, json, logging: 1.3 MB of Python), fixed for a Python
    version: trained on this repository's sources, the vocabulary (and every token count the agent tests hold
    against docs/ECONOMICS.md) moved with each commit."""
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    return [str(p) for d in ("asyncio", "email", "http", "json", "logging") for p in sorted((stdlib / d).glob("*.py"))]


def write_chat_checkpoint(folder: Path, template: str, max_len: int = 4096, vocab_size: int = 2048) -> Path:
    """A byte-level BPE tokenizer (trained on `tokenizer_corpus()`) and a Llama whose greedy reply after a
    newline (where chat templates end the prompt) is `CHAT_REPLY`, then EOS; elsewhere, as under a grammar, it
    prefers EOS, then closing JSON. One-hot state embeddings, attention and MLP outputs zeroed, one attention
    head of 16 dims (a 30k-token prompt prefills in seconds on a CPU), an LM head written so: a real model run
    by the real engine, only its weights chosen, so a test (or an agent) gets short replies to long prompts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train(tokenizer_corpus(), trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=CHAT_SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok.add_tokens(CHAT_ADDED)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "chat_template": template}))
    n = tok.get_vocab_size()
    vocab = -(-n // 64) * 64  # padded, as real checkpoints' heads often are
    eos = tok.token_to_id("<|im_end|>")
    script = [*tok.encode("\n").ids, *tok.encode(CHAT_REPLY).ids]
    hidden = 16
    assert len(set(script)) == len(script) < hidden, "each of these tokens is its own state"
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=max_len,
                      eos_token_id=eos)
    model = LlamaForCausalLM(cfg)
    embed = torch.zeros(vocab, hidden)
    embed[:, 0] = 1.0  # every token is state 0 ...
    head = torch.zeros(vocab, hidden)
    head -= torch.arange(vocab, dtype=torch.float32)[:, None] * 1e-4  # ... ties broken towards low ids
    head[eos] += 1.0
    for rank, text in enumerate(CLOSERS):
        head[tok.token_to_id(text)] += 0.9 - 0.1 * rank
    for state, t in enumerate(script, start=1):  # ... but a newline and the reply's tokens are states 1..
        embed[t] = 0.0
        embed[t, state] = 1.0
    for state, t in enumerate([*script[1:], eos], start=1):
        head[t, state] += 2.0  # state k's successor: the reply's next token (EOS after the last)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(embed)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.copy_(head * 10)  # the norm scales a one-hot state by 4: successors win by e^80
    model.float().eval().save_pretrained(str(folder))
    return folder
