"""The multimodal folders Gemma 3 and Llama 4 publish (`...ForConditionalGeneration`: a nested text_config, the
text model under `language_model.`, a vision tower beside) served text-only: loaded without the vision weights,
said on the start-up line, and an image part (or audio, or a file) refused with a 400 naming it. (Greedy parity with transformers'
ConditionalGeneration model, prefix hits, preemption and tiers: the `checkpoint` fixture's `*_vision` families.)"""

from __future__ import annotations

import json
import shutil

import anthropic
import httpx
import openai
import pytest
from safetensors.torch import load_file, save_file

from agentkv.engine.llm import LLM
from agentkv.engine.sequence import SamplingParams
from agentkv.model.config import ModelConfig
from agentkv.model.loader import load_model
from tests.engine.conftest import MULTIMODAL, prompts, write_checkpoint
from tests.server.conftest import LiveServer

GREEDY = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)
IMAGE = "image inputs are not supported by this server"


@pytest.fixture(scope="module", params=list(MULTIMODAL))
def family_folder(request, tmp_path_factory):
    return request.param, write_checkpoint(tmp_path_factory.mktemp(request.param), request.param, seed=5)


@pytest.fixture(scope="module")
def folder(family_folder):
    return family_folder[1]


def test_the_text_model_is_what_is_served(family_folder):
    """The same greedy tokens as the text-only checkpoint the folder's text model was copied from."""
    family, folder = family_folder
    llm = LLM(str(folder), dtype="float32", block_size=8)
    alone = LLM(str(folder.with_name(folder.name + "-text")), dtype="float32", block_size=8)
    assert llm.config.vision_tower and not alone.config.vision_tower
    assert llm.config.family == alone.config.family == MULTIMODAL[family]
    ps = prompts(3, seed=2, lo=20, hi=50)
    assert [o.outputs[0].token_ids for o in llm.generate(ps, GREEDY)] == \
           [o.outputs[0].token_ids for o in alone.generate(ps, GREEDY)]


def test_a_server_says_text_only_and_refuses_image_parts_naming_them(folder, capsys):
    server = LiveServer(["--model", str(folder), "--served-model-name", "mm", "--kv-cache-gb", "0.01",
                         "--max-num-seqs", "8"])
    try:
        assert "text only: its vision tower is not loaded" in capsys.readouterr().err
        oai = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
        text = oai.chat.completions.create(model="mm", max_tokens=3, messages=[{"role": "user", "content": "hello"}])
        assert text.usage.completion_tokens == 3
        image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
        with pytest.raises(openai.BadRequestError, match=f"part 1 is of type 'image_url': {IMAGE}") as e:
            oai.chat.completions.create(model="mm", max_tokens=3, messages=[
                {"role": "user", "content": [{"type": "text", "text": "what is it"}, image]}])
        assert e.value.body["param"] == "messages.0.content"
        audio = {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}}
        with pytest.raises(openai.BadRequestError, match="part 0 is of type 'input_audio': audio inputs are not"):
            oai.chat.completions.create(model="mm", max_tokens=3, messages=[{"role": "user", "content": [audio]}])
        with pytest.raises(openai.BadRequestError, match=f"input: part 0.content.0 is of type 'input_image': {IMAGE}"):
            oai.responses.create(model="mm", max_output_tokens=16, input=[{"role": "user", "content": [
                {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}])
        anth = anthropic.Anthropic(base_url=server.url, api_key="none", max_retries=0)
        block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
        with pytest.raises(anthropic.BadRequestError, match=f"messages.0.content: part 0 is of type 'image': {IMAGE}"):
            anth.messages.create(model="mm", max_tokens=3, messages=[{"role": "user", "content": [block]}])
        result = {"type": "tool_result", "tool_use_id": "t1", "content": [block]}
        with pytest.raises(anthropic.BadRequestError, match=f"messages.1.content: part 0.content.0 is of type 'image': {IMAGE}"):
            anth.messages.create(model="mm", max_tokens=3, messages=[
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                {"role": "user", "content": [result]}])
        assert httpx.get(server.url + "/health").status_code == 200  # the server carries on
    finally:
        server.stop()


def test_a_published_gemma3_text_config_takes_its_class_defaults():
    """google/gemma-3-27b-it's config.json (huggingface.co, read 2026-12-03: the figures models.toml carries)
    names neither vocab_size nor rope_theta in its text_config; transformers fills them from Gemma3TextConfig."""
    raw = {"architectures": ["Gemma3ForConditionalGeneration"], "eos_token_id": [1, 106], "torch_dtype": "bfloat16",
           "text_config": {"head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504,
                           "model_type": "gemma3_text", "num_attention_heads": 32, "num_hidden_layers": 62,
                           "num_key_value_heads": 16, "query_pre_attn_scalar": 168, "sliding_window": 1024,
                           "rope_scaling": {"factor": 8.0, "rope_type": "linear"}},
           "vision_config": {"model_type": "siglip_vision_model"}}
    cfg = ModelConfig.from_hf(raw)
    assert (cfg.family, cfg.vocab_size, cfg.rope_theta, cfg.local_rope_theta) == ("gemma3", 262_208, 1e6, 1e4)
    assert cfg.rope_scaling == {"factor": 8.0, "rope_type": "linear"} and cfg.eos_token_ids == (1, 106)
    assert cfg.layer_windows.count(0) == 10 and cfg.layer_windows.count(1024) == 52 and cfg.tie_word_embeddings
    assert cfg.max_position_embeddings == 131_072 and cfg.vision_tower


def test_published_text_configs_give_the_catalogs_layer_groups():
    """The two published folders' text models, read from their nested text_config (the fields the catalog's
    entries cite: agentkv/data/models.toml, read 2026-12-03), have the layer groups the report prices."""
    from agentkv.catalog import model

    gemma = {"architectures": ["Gemma3ForConditionalGeneration"], "text_config": {
        "head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504, "num_attention_heads": 32,
        "num_hidden_layers": 62, "num_key_value_heads": 16, "sliding_window": 1024}}
    scout = {"architectures": ["Llama4ForConditionalGeneration"], "tie_word_embeddings": False, "text_config": {
        "num_hidden_layers": 48, "hidden_size": 5120, "num_attention_heads": 40, "num_key_value_heads": 8,
        "head_dim": 128, "intermediate_size": 8192, "intermediate_size_mlp": 16384, "vocab_size": 202048,
        "max_position_embeddings": 10485760, "num_experts_per_tok": 1, "num_local_experts": 16,
        "interleave_moe_layer_step": 1, "attention_chunk_size": 8192, "rope_theta": 500000.0}}
    for raw, name in ((gemma, "gemma-3-27b"), (scout, "llama-4-scout")):
        cfg = ModelConfig.from_hf(raw)
        by_kind = sorted(model(name).attention, key=lambda g: g.kind)
        assert sorted(cfg.layer_groups(), key=lambda g: g.kind) == by_kind, name
        assert cfg.vocab_size == model(name).vocab and cfg.max_position_embeddings == model(name).context, name
    cfg = ModelConfig.from_hf(scout)
    assert (cfg.num_experts, cfg.experts_per_token, sum(cfg.moe_layers), cfg.dense_intermediate_size) == \
           (16, 1, 48, 16384)
    assert cfg.rope_layers == (True, True, True, False) * 12 and cfg.chunked and not cfg.tie_word_embeddings


def test_a_broken_multimodal_folder_is_one_clear_error(folder, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    raw = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({k: v for k, v in raw.items() if k != "text_config"}))
    with pytest.raises(ValueError, match=r"config.json: field 'text_config': missing \(a .*ForConditionalGeneration"):
        load_model(str(bad))
    (bad / "config.json").write_text(json.dumps(raw))
    shard = sorted(bad.glob("model-*.safetensors"))[0]
    tensors = load_file(str(shard))
    save_file({**tensors, "audio_tower.proj.weight": next(iter(tensors.values())).clone()}, str(shard),
              metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"tensor 'audio_tower.proj.weight' is not part of a (gemma3|llama4) model"):
        load_model(str(bad))
