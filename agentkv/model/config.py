"""A model's shape, read from its Hugging Face `config.json`.

One config covers Llama 3.x (with its RoPE frequency scaling), Qwen2.5 (biases on q/k/v), Qwen3 (RMSNorm on
q and k per head), Mistral, and Qwen3-MoE (Qwen3 with a routed mixture of experts in place of the MLP on
its sparse layers): they differ only in those flags and numbers.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentkv.model.deepseek_config import (
    CompressedShape,
    GroupedRouting,
    MLAShape,
    deepseek_fields,
    deepseek_v4_fields,
)

if TYPE_CHECKING:
    from agentkv.catalog import LayerGroup, ModelSpec

ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "Gemma3ForCausalLM": "gemma3",
    "GptOssForCausalLM": "gpt_oss",
    "Llama4ForCausalLM": "llama4",
    "Qwen3NextForCausalLM": "qwen3_next",
    "DeepseekV2ForCausalLM": "deepseek_v2",
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "DeepseekV4ForCausalLM": "deepseek_v4",
}
WINDOWED = {"sliding_attention": True, "chunked_attention": True, "full_attention": False}  # `layer_types`


DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(slots=True, frozen=True)
class DeltaNetShape:
    """A gated DeltaNet layer's heads (Qwen3-Next): q and k heads of `k_dim`, value heads of `v_dim` (a multiple of
    the key heads), and the causal conv's kernel."""

    k_heads: int
    v_heads: int
    k_dim: int
    v_dim: int
    conv_kernel: int

    @property
    def state_values(self) -> int:
        """Values one sequence keeps: the recurrent state, and the conv's last kernel - 1 inputs of q, k and v."""
        return self.v_heads * self.k_dim * self.v_dim + \
            (self.conv_kernel - 1) * (2 * self.k_heads * self.k_dim + self.v_heads * self.v_dim)


@dataclass(slots=True, frozen=True)
class ModelConfig:
    family: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    qk_norm: bool = False
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    torch_dtype: str = "bfloat16"
    num_experts: int = 0  # 0: dense (every layer an MLP)
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False  # renormalise the chosen experts' weights to sum to 1
    moe_layers: tuple[bool, ...] = ()  # per layer: a routed MoE block (True) or the dense MLP
    layer_windows: tuple[int, ...] = ()  # per layer: its sliding window (or chunk) in tokens (0: full attention)
    chunked: bool = False  # the windowed layers attend within their chunk (Llama 4), not a sliding window
    query_scale: float = 0.0  # 0: head_dim ** -0.5
    o_bias: bool = False
    attention_sinks: bool = False  # a learned logit per head in every softmax's denominator (gpt-oss)
    local_rope_theta: float = 0.0  # sliding layers' RoPE base where it differs, unscaled (Gemma 3); 0: the same
    activation: str = "silu"  # of the gated MLP: silu, or gelu_pytorch_tanh (Gemma)
    logit_softcap: float = 0.0  # cap * tanh(logits / cap) on the final logits (0: none)
    swiglu_limit: float = 0.0  # gpt-oss experts clamp their gate and up projections to it
    swiglu_alpha: float = 1.0
    rope_layers: tuple[bool, ...] = ()  # per layer: rotated (True) or NoPE (Llama 4's global layers); (): all
    interleaved_rope: bool = False  # RoPE on adjacent pairs of dims (Llama 4), not the two halves
    nope_temperature: tuple[float, float] = (0.0, 0.0)  # Llama 4's NoPE query scale: (floor_scale, attn_scale)
    qk_l2_norm: bool = False  # Llama 4: q and k RMS-normed without a weight after RoPE, on rotated layers
    shared_expert: bool = False  # a dense MLP of moe_intermediate_size beside the routed experts (Llama 4)
    dense_intermediate_size: int = 0  # the dense layers' MLP where it differs from intermediate_size (Llama 4)
    mxfp4: bool = False  # expert weights published as MXFP4 blocks and scales (gpt-oss), dequantized at load
    linear_layers: tuple[bool, ...] = ()  # per layer: gated DeltaNet (True) or full attention (Qwen3-Next)
    deltanet: DeltaNetShape | None = None
    rotary_dim: int = 0  # dims of a head RoPE rotates (Qwen3-Next: a quarter); 0: all
    shared_expert_size: int = 0  # a sigmoid-gated shared expert's width beside the routed ones (Qwen3-Next)
    mla: MLAShape | None = None  # multi-head latent attention (DeepSeek-V2/V3); head_dim is then its RoPE key's
    routing: GroupedRouting | None = None  # grouped top-k routing and shared experts (DeepSeek-V2/V3)
    fp8_block: tuple[int, ...] = ()  # weights published as fp8 codes with a scale per block of this shape
    v4: CompressedShape | None = None  # DeepSeek-V4's compressed attention and residual streams

    def window_of(self, layer: int) -> int:
        return self.layer_windows[layer] if self.layer_windows else 0

    def is_linear_layer(self, layer: int) -> bool:
        return bool(self.linear_layers) and self.linear_layers[layer]

    def is_moe_layer(self, layer: int) -> bool:
        return bool(self.moe_layers) and self.moe_layers[layer]

    @staticmethod
    def from_dir(model_dir: str) -> ModelConfig:
        path = os.path.join(model_dir, "config.json")
        try:
            with open(path) as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no config.json in the model folder") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
        gen = os.path.join(model_dir, "generation_config.json")
        if os.path.exists(gen):
            with open(gen) as f:
                extra = json.load(f)
            raw = {**raw, "eos_token_id": extra.get("eos_token_id", raw.get("eos_token_id"))}
        return ModelConfig.from_hf(raw, path)

    @staticmethod
    def from_hf(raw: dict[str, Any], path: str = "config.json") -> ModelConfig:
        arch = (raw.get("architectures") or [None])[0]
        family = ARCHITECTURES.get(arch or "", raw.get("model_type"))
        if family not in ARCHITECTURES.values():
            raise ValueError(f"{path}: field 'architectures': {arch or raw.get('model_type')!r} is not supported "
                             f"(supported: {', '.join(ARCHITECTURES)})")

        def need(key: str) -> Any:
            if key not in raw or raw[key] is None:
                raise ValueError(f"{path}: field '{key}': missing")
            return raw[key]

        heads = int(need("num_attention_heads"))
        hidden = int(need("hidden_size"))
        rope = dict(raw.get("rope_scaling") or raw.get("rope_parameters") or {})
        local_rope = dict(rope.get("sliding_attention") or {})
        if "full_attention" in rope:  # transformers 5 writes one RoPE per layer type (Gemma 3)
            rope = dict(rope["full_attention"])
        theta = raw.get("rope_theta", rope.get("rope_theta", 10000.0))
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in ("default", "llama3", "linear", "yarn"):
            raise ValueError(f"{path}: field 'rope_scaling': rope type {kind!r} is not supported "
                             "(default, linear, llama3, yarn)")
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        layers = int(need("num_hidden_layers"))
        return ModelConfig(
            family=family,
            hidden_size=hidden,
            intermediate_size=int(need("moe_intermediate_size" if family == "deepseek_v4" else "intermediate_size")),
            num_layers=layers,
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("qk_rope_head_dim") or raw.get("head_dim") or hidden // heads),  # MLA: its RoPE key
            vocab_size=int(need("vocab_size")),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(theta),
            max_position_embeddings=int(raw.get("max_position_embeddings", 8192)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", family == "gemma3")),
            qkv_bias=bool(raw.get("attention_bias", family in ("qwen2", "gpt_oss"))),
            qk_norm=family in ("qwen3", "qwen3_moe", "gemma3", "qwen3_next"),
            rope_scaling={**rope, "rope_type": kind},
            eos_token_ids=eos_ids,
            bos_token_id=raw.get("bos_token_id"),
            torch_dtype=str(raw.get("torch_dtype") or raw.get("dtype") or "bfloat16"),
            **(_moe_fields(raw, layers, need, path) if family in ("qwen3_moe", "qwen3_next") else {}),
            **(_qwen3_next_fields(raw, layers, need, path, rope) if family == "qwen3_next" else {}),
            **(_gemma3_fields(raw, layers, need, path, local_rope) if family == "gemma3" else {}),
            **(_gpt_oss_fields(raw, layers, need, path) if family == "gpt_oss" else {}),
            **(_llama4_fields(raw, layers, need, path) if family == "llama4" else {}),
            **(deepseek_fields(raw, layers, need, path, family) if family in ("deepseek_v2", "deepseek_v3") else {}),
            **(deepseek_v4_fields(raw, layers, need, path) if family == "deepseek_v4" else {}),
        )

    def spec(self, name: str) -> ModelSpec:
        """The catalog's view of this shape: what `kvcache/sizing.py` and the cost-aware policy read."""
        from agentkv.catalog import ModelSpec

        attn = self.mla.params(self.hidden_size, self.num_heads) if self.mla else \
            self.v4.params(self.hidden_size, self.num_heads) / self.num_layers if self.v4 else \
            self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        dense = 3 * self.hidden_size * self.intermediate_size
        expert = 3 * self.hidden_size * self.moe_intermediate_size
        always = self.hidden_size * self.num_experts + (self.routing.shared * expert if self.routing else 0)  # router, shared experts
        moe = sum(self.moe_layers)
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        base = self.num_layers * attn + (self.num_layers - moe) * dense + moe * always + embed
        if self.deltanet is not None:  # gated attention's q_proj is doubled; DeltaNet layers project otherwise
            linear, s = sum(self.linear_layers), self.deltanet
            mixer = self.hidden_size * (2 * s.k_heads * s.k_dim + 3 * s.v_heads * s.v_dim + 2 * s.v_heads) + \
                s.conv_kernel * (2 * s.k_heads * s.k_dim + s.v_heads * s.v_dim)  # in/out projections, conv
            base += (self.num_layers - linear) * self.hidden_size * self.head_dim * self.num_heads + \
                linear * (mixer - attn) + moe * (3 * self.hidden_size * self.shared_expert_size + self.hidden_size)
        total = float(base + moe * self.num_experts * expert)
        active = float(base + moe * self.experts_per_token * expert)
        head_dim = self.mla.qk_nope_head_dim if self.mla else self.v4.dim if self.v4 else self.head_dim  # as the catalog
        return ModelSpec(name, "config.json", self.num_layers, self.num_heads, self.num_kv_heads, head_dim,
                         self.hidden_size, self.intermediate_size, self.vocab_size, total, active,
                         self.max_position_embeddings, attention=self.layer_groups())

    def layer_groups(self) -> tuple[LayerGroup, ...]:
        """Its layers by attention kind, as the catalog describes them: () where every layer is full."""
        from agentkv.catalog import LayerGroup

        if self.deltanet is not None:
            state = self.deltanet.state_values * DTYPE_BYTES.get(self.torch_dtype, 2)
            linear = sum(self.linear_layers)
            return LayerGroup("full", self.num_layers - linear), LayerGroup("linear", linear, state_bytes=state)
        if self.v4:
            return self.v4.layer_groups()
        if self.mla:
            return (LayerGroup("mla", self.num_layers, latent=self.mla.kv_lora_rank, rope=self.mla.qk_rope_head_dim),)
        windows = sorted({w for w in self.layer_windows if w})
        if not windows:
            return ()
        kind = "chunked" if self.chunked else "sliding"
        groups = [LayerGroup(kind, self.layer_windows.count(w), window=w) for w in windows]
        full = self.layer_windows.count(0)
        return (LayerGroup("full", full), *groups) if full else tuple(groups)


def _moe_fields(raw: dict[str, Any], layers: int, need: Any, path: str) -> dict[str, Any]:
    """Qwen3-MoE's routing: layer i is sparse unless listed in `mlp_only_layers` or off the
    `decoder_sparse_step` stride (as transformers' Qwen3MoeDecoderLayer decides)."""
    experts = int(raw.get("num_local_experts") or need("num_experts"))  # transformers 5 writes the former
    top_k = int(need("num_experts_per_tok"))
    if not 0 < top_k <= experts:
        raise ValueError(f"{path}: field 'num_experts_per_tok': {top_k} is not in [1, num_experts={experts}]")
    step = int(raw.get("decoder_sparse_step", 1) or 1)
    dense = set(raw.get("mlp_only_layers") or ())
    return {"num_experts": experts, "experts_per_token": top_k,
            "moe_intermediate_size": int(need("moe_intermediate_size")),
            "norm_topk_prob": bool(raw.get("norm_topk_prob", False)),
            "moe_layers": tuple(i not in dense and (i + 1) % step == 0 for i in range(layers))}


def _qwen3_next_fields(raw: dict[str, Any], layers: int, need: Any, path: str, rope: dict) -> dict[str, Any]:
    """Qwen3-Next: gated DeltaNet layers and full attention every `full_attention_interval` (4), RoPE on a
    `partial_rotary_factor` (0.25) of each head, MoE layers with a gated shared expert (as Qwen3-MoE routes)."""
    interval = int(raw.get("full_attention_interval", 4))
    types = raw.get("layer_types") or ["full_attention" if (i + 1) % interval == 0 else "linear_attention"
                                       for i in range(layers)]
    if len(types) != layers or any(t not in ("linear_attention", "full_attention") for t in types):
        raise ValueError(f"{path}: field 'layer_types': expected {layers} of linear_attention, full_attention")
    shape = DeltaNetShape(int(need("linear_num_key_heads")), int(need("linear_num_value_heads")),
                          int(need("linear_key_head_dim")), int(need("linear_value_head_dim")),
                          int(raw.get("linear_conv_kernel_dim", 4)))
    if shape.v_heads % shape.k_heads or shape.conv_kernel < 2:
        raise ValueError(f"{path}: field 'linear_num_value_heads': {shape.v_heads} is not a multiple of "
                         f"linear_num_key_heads={shape.k_heads} (or linear_conv_kernel_dim < 2)")
    head_dim = int(raw.get("head_dim") or int(need("hidden_size")) // int(need("num_attention_heads")))
    factor = float(raw.get("partial_rotary_factor", rope.get("partial_rotary_factor", 0.25)))
    return {"linear_layers": tuple(t == "linear_attention" for t in types), "deltanet": shape,
            "rotary_dim": int(head_dim * factor), "activation": str(raw.get("hidden_act", "silu")),
            "shared_expert_size": int(raw.get("shared_expert_intermediate_size") or 0)}


def _layer_windows(raw: dict[str, Any], layers: int, window: int, path: str, pattern: int) -> tuple[int, ...]:
    """Each layer's window (or chunk) from `layer_types`, or else every `pattern`-th layer full, the others
    sliding (the `sliding_window_pattern` older configs give)."""
    types = raw.get("layer_types") or ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                                       for i in range(layers)]
    if len(types) != layers or any(t not in WINDOWED for t in types):
        raise ValueError(f"{path}: field 'layer_types': expected {layers} of {', '.join(WINDOWED)}")
    return tuple(window if WINDOWED[t] else 0 for t in types)


def _gemma3_fields(raw: dict[str, Any], layers: int, need: Any, path: str, local_rope: dict) -> dict[str, Any]:
    """Gemma 3: 5 sliding layers to 1 global by default, the sliding ones on their own RoPE base, queries scaled
    by query_pre_attn_scalar, a GELU-tanh MLP, q/k RMSNorm, tied embeddings."""
    local = local_rope.get("rope_theta", raw.get("rope_local_base_freq", 10000.0))
    if raw.get("attn_logit_softcapping"):  # Gemma 2's; every Gemma 3 config has none
        raise ValueError(f"{path}: field 'attn_logit_softcapping': attention logit soft-capping is not supported")
    pattern = int(raw.get("sliding_window_pattern", 6))
    return {"layer_windows": _layer_windows(raw, layers, int(need("sliding_window")), path, pattern),
            "query_scale": float(raw.get("query_pre_attn_scalar", 256)) ** -0.5,
            "local_rope_theta": float(local), "activation": str(raw.get("hidden_activation", "gelu_pytorch_tanh")),
            "logit_softcap": float(raw.get("final_logit_softcapping") or 0.0)}


def _gpt_oss_fields(raw: dict[str, Any], layers: int, need: Any, path: str) -> dict[str, Any]:
    """gpt-oss: sliding (128) and full layers alternating, a sink logit per head, biases on every attention
    projection, every layer a MoE (top-k of the router's logits, softmaxed) of clamped SwiGLU experts."""
    quant = (raw.get("quantization_config") or {}).get("quant_method")
    if quant not in (None, "mxfp4"):
        raise ValueError(f"{path}: field 'quantization_config': {quant} weights are not supported (bf16, mxfp4)")
    experts, top_k = int(need("num_local_experts")), int(need("num_experts_per_tok"))
    if not 0 < top_k <= experts:
        raise ValueError(f"{path}: field 'num_experts_per_tok': {top_k} is not in [1, num_local_experts={experts}]")
    return {"layer_windows": _layer_windows(raw, layers, int(need("sliding_window")), path, 2),
            "attention_sinks": True,
            "o_bias": bool(raw.get("attention_bias", True)), "num_experts": experts, "experts_per_token": top_k,
            "moe_intermediate_size": int(need("intermediate_size")), "moe_layers": (True,) * layers,
            "swiglu_limit": float(raw.get("swiglu_limit", 7.0)), "swiglu_alpha": float(raw.get("swiglu_alpha", 1.702)),
            "mxfp4": quant == "mxfp4"}


def _llama4_fields(raw: dict[str, Any], layers: int, need: Any, path: str) -> dict[str, Any]:
    """Llama 4 (text): chunked attention with RoPE on 3 layers of 4, global NoPE attention (queries scaled up
    with the position) on the 4th; RoPE on adjacent pairs; MoE layers every `interleave_moe_layer_step`
    (sigmoid-weighted top-k experts fed the weighted input, plus a shared expert)."""
    rope = raw.get("no_rope_layers") or [int((i + 1) % int(raw.get("no_rope_layer_interval", 4)) != 0)
                                         for i in range(layers)]
    chunk = raw.get("attention_chunk_size")
    types = raw.get("layer_types") or ["chunked_attention" if r and chunk else "full_attention" for r in rope]
    step = int(raw.get("interleave_moe_layer_step", 1))
    moe = set(raw.get("moe_layers") if raw.get("moe_layers") is not None else range(step - 1, layers, step))
    experts, top_k = int(need("num_local_experts")), int(need("num_experts_per_tok"))
    if len(rope) != layers or not 0 < top_k <= experts:
        raise ValueError(f"{path}: field 'no_rope_layers' or 'num_experts_per_tok' does not fit {layers} layers "
                         f"of {experts} experts")
    windows = _layer_windows({**raw, "layer_types": types}, layers, int(chunk), path, 4) if chunk else ()
    tuning = bool(raw.get("attn_temperature_tuning", True))
    return {"layer_windows": windows, "chunked": True, "rope_layers": tuple(bool(r) for r in rope),
            "interleaved_rope": True, "qk_l2_norm": bool(raw.get("use_qk_norm", True)),
            "nope_temperature": (float(raw.get("floor_scale", 8192)), float(raw.get("attn_scale", 0.1)))
            if tuning else (0.0, 0.0),
            "num_experts": experts, "experts_per_token": top_k, "shared_expert": True,
            "moe_intermediate_size": int(need("intermediate_size")),
            "dense_intermediate_size": int(raw.get("intermediate_size_mlp") or need("intermediate_size")),
            "moe_layers": tuple(i in moe for i in range(layers))}
