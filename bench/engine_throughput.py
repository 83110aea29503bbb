"""Generation throughput of the agentkv engine against Hugging Face transformers' `generate`, same weights,
same prompts, same machine, in the same run (the baseline).

CPU (default): a small Llama-shaped model. GPU: `--shape llama-3.1-8b` builds Llama-3.1-8B's architecture from
the model catalog (its real config: RoPE scaling included) with random weights (no download) in bf16, one copy
of the weights shared by both engines. Greedy decoding, every request the same length. On CUDA it also measures
decode time per output token at batch 1 against the bound of reading every weight once per token at the
device-to-device copy bandwidth measured in the same run.
Run: .venv/bin/python -m bench.engine_throughput [--shape llama-3.1-8b] [--requests 32] [--prompt 512] [--new 128]
     [--attention auto|torch|triton] [--kv-codec auto|bf16|fp8|int8|int4] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from agentkv.catalog import model as catalog_model
from agentkv.codecs import get_codec
from agentkv.engine.llm import LLM
from agentkv.engine.sequence import SamplingParams
from agentkv.kernels.backends import BACKENDS, make_backend
from agentkv.model.config import ModelConfig
from agentkv.model.llama import LlamaForCausalLM
from bench._common import machine

SMALL = dict(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=2, max_position_embeddings=8192)


def hf_config(shape: str) -> dict:
    if shape == "small":
        return SMALL
    m = catalog_model(shape)
    raw = dict(vocab_size=m.vocab, hidden_size=m.hidden, intermediate_size=m.intermediate,
               num_hidden_layers=m.layers, num_attention_heads=m.heads, num_key_value_heads=m.kv_heads,
               head_dim=m.head_dim, max_position_embeddings=m.context, rope_theta=500000.0)
    if shape.startswith("llama-3"):  # as in Meta's config.json for Llama 3.1 / 3.2 / 3.3
        raw.update(rms_norm_eps=1e-5, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                        high_freq_factor=4.0, original_max_position_embeddings=8192))
    return raw


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="small", help="small, or a models.toml name (e.g. llama-3.1-8b)")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--attention", default="auto", choices=BACKENDS, help="auto: triton on CUDA, torch elsewhere")
    ap.add_argument("--kv-codec", default="auto", help="KV page format (auto: the model's dtype)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model's per-token work")
    args = ap.parse_args()
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM as HFLlama

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    raw = {**hf_config(args.shape), "architectures": ["LlamaForCausalLM"]}
    codec = get_codec(args.kv_codec if args.kv_codec != "auto" else {torch.bfloat16: "bf16"}.get(dtype, "fp32"))
    backend = make_backend(args.attention, device, codec)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in their dtype: an 8B model never exists in fp32
    with torch.device(device):
        hf = HFLlama(LlamaConfig(**raw)).eval()
        ours = LlamaForCausalLM(ModelConfig.from_hf(raw), backend)
    torch.set_default_dtype(default)
    ours.load_state_dict(hf.state_dict(), strict=False, assign=True)  # the same tensors: one copy of the weights
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(10, raw["vocab_size"], (args.requests, args.prompt), generator=g)
    total = args.requests * args.new
    print(f"machine: {machine()}; device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    print(f"shape {args.shape}, {dtype}, {args.requests} requests x ({args.prompt} prompt + {args.new} new tokens), "
          f"attention {type(backend).__name__}, KV {codec.name}{', compiled' if args.compile else ''}")

    def hf_run() -> float:
        t = time.perf_counter()
        with torch.no_grad():
            hf.generate(prompts.to(device), attention_mask=torch.ones_like(prompts).to(device), do_sample=False,
                        max_new_tokens=args.new, min_new_tokens=args.new, pad_token_id=0, eos_token_id=None)
        _sync(device)
        return time.perf_counter() - t

    kv = 2 * args.requests * (args.prompt + args.new) * raw["num_hidden_layers"] * raw["num_key_value_heads"] * \
        (raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]) * torch.empty((), dtype=dtype).element_size()
    llm = LLM(ours, kv_cache_bytes=int(1.2 * kv) + 2**20, max_num_batched_tokens=max(4096, args.prompt),
              max_num_seqs=args.requests, enable_prefix_caching=False, kv_codec=codec.name, compile=args.compile)
    params = SamplingParams(max_tokens=args.new, temperature=0, ignore_eos=True)

    def our_run() -> float:
        t = time.perf_counter()
        llm.generate([p.tolist() for p in prompts], params)
        _sync(device)
        return time.perf_counter() - t

    hf_run()  # warm-up both
    our_run()
    base, mine = min(hf_run() for _ in range(2)), min(our_run() for _ in range(2))
    print(f"HF transformers generate: {base:7.2f} s  {total / base:8.1f} new tok/s")
    print(f"agentkv LLM.generate:     {mine:7.2f} s  {total / mine:8.1f} new tok/s  ({base / mine:.2f}x HF)")
    if device.type == "cuda":
        tpot_vs_bound(llm, ours, prompts[0].tolist(), args.new)
    return 0


def tpot_vs_bound(llm: LLM, model: LlamaForCausalLM, prompt: list[int], new: int) -> None:
    """Batch-1 decode: every step reads every weight once (the embedding table aside: one row), so its time is
    at least weight bytes / bandwidth; the copy bandwidth measured here stands in for the read bandwidth."""
    def run(n: int) -> float:
        t = time.perf_counter()
        llm.generate([prompt], SamplingParams(max_tokens=n, temperature=0, ignore_eos=True))
        torch.cuda.synchronize()
        return time.perf_counter() - t

    run(new)
    tpot = min((run(new) - run(1)) / (new - 1) for _ in range(2))  # the prompt's prefill cancels out
    embed = model.model.embed_tokens.weight
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if p is not embed or
                  model.config.tie_word_embeddings)
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        dst.copy_(src)
    torch.cuda.synchronize()
    bandwidth = 2 * 10 * src.numel() / (time.perf_counter() - t)
    bound = weights / bandwidth
    print(f"decode TPOT at batch 1: {tpot * 1e3:.2f} ms; weights {weights / 1e9:.2f} GB / copy bandwidth "
          f"{bandwidth / 1e9:,.0f} GB/s = {bound * 1e3:.2f} ms bound ({100 * bound / tpot:.0f}% of the bound reached)")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    sys.exit(main())
