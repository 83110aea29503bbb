"""Generation throughput of the agentkv engine against Hugging Face transformers' `generate`, same weights,
same prompts, same machine, in the same run (the baseline).

CPU (default): a small Llama-shaped model. GPU: `--shape llama-3.1-8b` builds Llama-3.1-8B's architecture from
the model catalog with random weights (no download) in bf16. Greedy decoding, every request the same length.
Run: .venv/bin/python -m bench.engine_throughput [--shape llama-3.1-8b] [--requests 32] [--prompt 512] [--new 128]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from agentkv.catalog import model as catalog_model
from agentkv.engine.llm import LLM
from agentkv.engine.sequence import SamplingParams
from agentkv.kernels.attention import TorchAttention
from agentkv.model.config import ModelConfig
from agentkv.model.llama import LlamaForCausalLM
from bench._common import machine

SMALL = dict(vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
             num_key_value_heads=2, max_position_embeddings=8192)


def hf_config(shape: str) -> dict:
    if shape == "small":
        return SMALL
    m = catalog_model(shape)
    return dict(vocab_size=m.vocab, hidden_size=m.hidden, intermediate_size=m.intermediate,
                num_hidden_layers=m.layers, num_attention_heads=m.heads, num_key_value_heads=m.kv_heads,
                head_dim=m.head_dim, max_position_embeddings=m.context, rope_theta=500000.0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="small", help="small, or a models.toml name (e.g. llama-3.1-8b)")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=64)
    args = ap.parse_args()
    from transformers import LlamaConfig
    from transformers import LlamaForCausalLM as HFLlama

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    raw = {**hf_config(args.shape), "architectures": ["LlamaForCausalLM"]}
    with torch.device(device):
        hf = HFLlama(LlamaConfig(**raw)).to(dtype).eval()
        ours = LlamaForCausalLM(ModelConfig.from_hf(raw), TorchAttention()).to(dtype)
    ours.load_state_dict(hf.state_dict(), strict=False)
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(10, raw["vocab_size"], (args.requests, args.prompt), generator=g)
    total = args.requests * args.new
    print(f"machine: {machine()}; device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}")
    print(f"shape {args.shape}, {dtype}, {args.requests} requests x ({args.prompt} prompt + {args.new} new tokens)")

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
              max_num_seqs=args.requests, enable_prefix_caching=False)
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
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


if __name__ == "__main__":
    sys.exit(main())
