"""Load a Hugging Face checkpoint folder (config.json + one or sharded safetensors) into our model."""

from __future__ import annotations

import json
import logging
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
# A multimodal folder's tensor names: its text model's (published under `language_model.`, transformers 5's own
# layout under `model.language_model.`) renamed to ours; the vision tower's and projector's skipped.
TEXT_PREFIXES = (("language_model.", ""), ("model.language_model.", "model."))
VISION_PREFIXES = ("vision_tower.", "vision_model.", "multi_modal_projector.", "model.vision_tower.",
                   "model.vision_model.", "model.multi_modal_projector.")
log = logging.getLogger(__name__)
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


def text_name(stored: str) -> str | None:
    """A multimodal checkpoint's tensor as our text model names it, or None for the vision side (not loaded:
    the server serves text only and refuses image parts)."""
    if stored.startswith(VISION_PREFIXES):
        return None
    for prefix, ours in TEXT_PREFIXES:
        if stored.startswith(prefix):
            return ours + stored[len(prefix):]
    return stored  # named neither way: the unknown-tensor check below says so


def load_model(model_dir: str, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu",
               backend: AttentionBackend | None = None) -> LlamaForCausalLM:
    cfg = ModelConfig.from_dir(model_dir)
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        dtype = DTYPES[dtype]
    dtype = dtype or DTYPES.get(cfg.torch_dtype, torch.bfloat16)
    with torch.device("meta"):
        model = MODELS.get(cfg.family, LlamaForCausalLM)(cfg, backend or TorchAttention())
    expected = {k for k in model.state_dict() if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    tensors = _read_tensors(model_dir, cfg, model, expected, dtype, device)
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


def _read_tensors(model_dir: str, cfg: ModelConfig, model: LlamaForCausalLM, expected: set[str], dtype: torch.dtype,
                  device: str | torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of the folder's shards under our model's names, packed formats unpacked, a multimodal
    folder's vision side skipped."""
    tensors: dict[str, torch.Tensor] = {}
    packed: dict[str, dict[str, torch.Tensor]] = {}  # MXFP4 or block-fp8 tensors: name -> its parts
    skipped = 0  # a multimodal folder's vision tensors
    for path in weight_files(model_dir):
        try:  # a truncated or corrupt file fails here, on its header (safetensors' own error type)
            opened = safe_open(path, framework="pt", device="cpu")
        except Exception as e:
            raise ValueError(f"{path}: not a valid safetensors file ({e})") from None
        with opened as f:
            for stored in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                name = text_name(stored) if cfg.vision_tower else stored
                skipped += name is None
                if name is None or name.endswith("rotary_emb.inv_freq") or model.skips(name):
                    continue
                base, part = name[:-7], name[-7:]
                if part in mxfp4.SUFFIXES and base in expected and cfg.mxfp4:
                    packed.setdefault(base, {})[part] = f.get_tensor(stored).to(device)
                    continue
                scaled = name.removesuffix(fp8_blocks.SCALE)
                if cfg.fp8_block and scaled != name and scaled in expected:
                    packed.setdefault(scaled, {})[fp8_blocks.SCALE] = f.get_tensor(stored).to(device)
                    continue
                if name not in expected:
                    raise ValueError(f"{path}: tensor '{stored}' is not part of a {cfg.family} model")
                tensor = f.get_tensor(stored)
                if cfg.fp8_block and tensor.dtype == torch.float8_e4m3fn:
                    packed.setdefault(name, {})[fp8_blocks.CODES] = tensor.to(device)
                    continue
                tensors[name] = tensor.to(device=device, dtype=model.dtype_of(name, dtype))
    for name, parts in packed.items():
        tensors[name] = _unpack(model_dir, name, parts, cfg, dtype)
    if skipped:
        log.info("%s: %d vision tensors not loaded (the text model is served alone)", model_dir, skipped)
    return tensors


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
