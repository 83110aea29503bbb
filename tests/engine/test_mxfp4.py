"""gpt-oss as published: expert weights in MXFP4 blocks and scales. The loader's dequantization gives the
logits transformers gives with its own MXFP4 dequantization (`convert_moe_packed_tensors`) of the same bytes."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from agentkv.model.loader import load_model
from tests.engine.conftest import hf_model, prompts, write_checkpoint
from tests.engine.test_model_vs_hf import paged, run

LUT = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[experts, in, out] → MXFP4 blocks [experts, out, in/32, 16] and scales [experts, out, in/32]."""
    x = w.transpose(1, 2).reshape(w.shape[0], w.shape[2], -1, 32)
    exp = torch.ceil(torch.log2(x.abs().amax(-1).clamp(min=1e-30) / 6.0))
    codes = (x / torch.exp2(exp)[..., None])[..., None].sub(LUT).abs().argmin(-1).to(torch.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4), (exp + 127).to(torch.uint8)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    bf16 = write_checkpoint(tmp_path_factory.mktemp("gpt-oss-bf16"), "gpt_oss", seed=2)
    packed = tmp_path_factory.mktemp("gpt-oss-mxfp4")
    for f in bf16.iterdir():
        shutil.copy(f, packed / f.name)
    for f in packed.glob("*.safetensors"):
        tensors = load_file(str(f))
        for name in [n for n in tensors if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
            tensors[name + "_blocks"], tensors[name + "_scales"] = quantize(tensors.pop(name))
        save_file(tensors, str(f), metadata={"format": "pt"})
    index = packed / "model.safetensors.index.json"
    if index.exists():
        raw = json.loads(index.read_text())
        weights = raw["weight_map"]
        for name in [n for n in weights if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
            shard = weights.pop(name)
            weights[name + "_blocks"] = weights[name + "_scales"] = shard
        index.write_text(json.dumps(raw))
    cfg = json.loads((packed / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["self_attn", "router"]}
    (packed / "config.json").write_text(json.dumps(cfg))
    return bf16, packed


def test_mxfp4_experts_load_as_transformers_dequantizes_them(folders):
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    bf16, packed = folders
    ours = load_model(str(packed), "float32")
    assert ours.config.mxfp4
    ref = hf_model(bf16)  # the same model, its experts replaced by transformers' reading of the MXFP4 bytes
    tensors = {k: v for f in packed.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    with torch.no_grad():
        for i, layer in enumerate(ref.model.layers):
            for proj in ("gate_up_proj", "down_proj"):
                name = f"model.layers.{i}.mlp.experts.{proj}"
                deq = convert_moe_packed_tensors(tensors[name + "_blocks"], tensors[name + "_scales"],
                                                 dtype=torch.float32)
                assert not torch.equal(deq, getattr(layer.mlp.experts, proj))  # quantization changed them
                getattr(layer.mlp.experts, proj).copy_(deq)
    p = prompts(1, seed=4, lo=40, hi=41)[0]
    with torch.no_grad():
        full = ref(torch.tensor([p])).logits[0]
    assert torch.allclose(run(ours, paged(ours), p, 0, [3, 1, 4, 5, 9]), full, atol=1e-4)


def test_a_broken_mxfp4_tensor_is_named(folders, tmp_path):
    _, packed = folders
    broken = tmp_path / "broken"
    shutil.copytree(packed, broken)
    for f in broken.glob("*.safetensors"):
        tensors = load_file(str(f))
        for name in [n for n in tensors if n.endswith("layers.0.mlp.experts.down_proj_scales")]:
            del tensors[name]
        save_file(tensors, str(f), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=re.escape("MXFP4 tensor 'model.layers.0.mlp.experts.down_proj' lacks")):
        load_model(str(broken), "float32")
