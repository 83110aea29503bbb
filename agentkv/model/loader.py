"""Load a Hugging Face checkpoint folder (config.json + one or sharded safetensors) into our model."""

from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open

from agentkv.kernels.attention import AttentionBackend, TorchAttention
from agentkv.model import fp8_blocks, mxfp4
from agentkv.model.config import ModelConfig
from agentkv.model.deepseek_v3 import DeepseekV3ForCausalLM
from agentkv.model.deepseek_v4 import DeepseekV4ForCausalLM
from agentkv.model.gemma3 import Gemma3ForCausalLM
from agentkv.model.gpt_oss import GptOssForCausalLM
from agentkv.model.llama import LlamaForCausalLM, Rotary
from agentkv.model.llama4 import Llama4ForCausalLM
from agentkv.model.qwen3_next import Qwen3NextForCausalLM

MODELS: dict[str, type[LlamaForCausalLM]] = {"gemma3": Gemma3ForCausalLM, "gpt_oss": GptOssForCausalLM,
                                             "llama4": Llama4ForCausalLM,
                                             "qwen3_next": Qwen3NextForCausalLM,
                                             "deepseek_v2": DeepseekV3ForCausalLM,
                                             "deepseek_v3": DeepseekV3ForCausalLM,
                                             "deepseek_v4": DeepseekV4ForCausalLM}  # every other family: llama.py
DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "float32": torch.float32, "fp32": torch.float32}


def weight_files(model_dir: str) -> list[str]:
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(model_dir, s) for s in shards]
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        return [single]
    raise FileNotFoundError(f"{model_dir}: no model.safetensors or model.safetensors.index.json")


def load_model(model_dir: str, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu",
               backend: AttentionBackend | None = None, paged: bool = True) -> LlamaForCausalLM:
    """`paged`: for the engine and kv-eval, which run the model over pages (refused where the family has none)."""
    cfg = ModelConfig.from_dir(model_dir)
    if paged and cfg.v4:
        raise ValueError(f"{model_dir}: DeepSeek-V4 ({cfg.v4.describe()}) runs whole sequences only "
                         "(agentkv.model.deepseek_v4): its compressed page group and prefix-hit rewind are not in "
                         "the engine yet (issue 30)")
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    dtype = dtype or DTYPES.get(cfg.torch_dtype, torch.bfloat16)
    with torch.device("meta"):
        model = MODELS.get(cfg.family, LlamaForCausalLM)(cfg, backend or TorchAttention())
    expected = {k for k in model.state_dict() if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    tensors: dict[str, torch.Tensor] = {}
    packed: dict[str, dict[str, torch.Tensor]] = {}  # MXFP4 or block-fp8 tensors: name -> its parts
    for path in weight_files(model_dir):
        try:  # a truncated or corrupt file fails here, on its header (safetensors' own error type)
            opened = safe_open(path, framework="pt", device="cpu")
        except Exception as e:
            raise ValueError(f"{path}: not a valid safetensors file ({e})") from None
        with opened as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if name.endswith("rotary_emb.inv_freq") or model.skips(name):
                    continue
                base, part = name[:-7], name[-7:]
                if part in mxfp4.SUFFIXES and base in expected and cfg.mxfp4:
                    packed.setdefault(base, {})[part] = f.get_tensor(name).to(device)
                    continue
                scaled = name.removesuffix(fp8_blocks.SCALE)
                if cfg.fp8_block and scaled != name and scaled in expected:
                    packed.setdefault(scaled, {})[fp8_blocks.SCALE] = f.get_tensor(name).to(device)
                    continue
                if name not in expected:
                    raise ValueError(f"{path}: tensor '{name}' is not part of a {cfg.family} model")
                tensor = f.get_tensor(name)
                if cfg.fp8_block and tensor.dtype == torch.float8_e4m3fn:
                    packed.setdefault(name, {})[fp8_blocks.CODES] = tensor.to(device)
                    continue
                tensors[name] = tensor.to(device=device, dtype=model.dtype_of(name, dtype))
    for name, parts in packed.items():
        tensors[name] = _unpack(model_dir, name, parts, cfg, dtype)
    missing = sorted(expected - set(tensors))
    if missing:
        raise ValueError(f"{model_dir}: checkpoint lacks tensor '{missing[0]}' ({len(missing)} missing)")
    model.load_state_dict(tensors, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    for module in model.modules():
        if isinstance(module, Rotary):
            module.materialise(device)
    for name, p in model.named_parameters():
        if p.device.type == "meta":
            raise ValueError(f"{model_dir}: parameter '{name}' was not loaded")
    return model.eval()


def _unpack(model_dir: str, name: str, parts: dict[str, torch.Tensor], cfg: ModelConfig,
            dtype: torch.dtype) -> torch.Tensor:
    """A weight published packed (gpt-oss's MXFP4 blocks and scales, DeepSeek's fp8 codes and block scales),
    dequantized to `dtype`."""
    kind, want = ("fp8", fp8_blocks.PARTS) if cfg.fp8_block else ("MXFP4", mxfp4.SUFFIXES)
    if set(parts) != set(want):
        lacks = ", ".join(f"'{name}{p}'" for p in sorted(set(want) - set(parts)))
        raise ValueError(f"{model_dir}: {kind} tensor '{name}' lacks its {lacks}")
    if cfg.fp8_block:
        return fp8_blocks.dequantize(parts[fp8_blocks.CODES], parts[fp8_blocks.SCALE], cfg.fp8_block, dtype)
    return mxfp4.dequantize(parts["_blocks"], parts["_scales"], dtype)
