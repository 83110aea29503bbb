"""`agentkv generate`: run a local checkpoint on prompts through the engine (`LLM`), as vLLM's offline API."""

from __future__ import annotations

import argparse
import json
import os

from agentkv.cli_errors import UsageError, positive


def add_parser(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="run a local Llama-family checkpoint (HF folder) on prompts")
    gen.add_argument("--model", required=True, help="folder with config.json, safetensors and tokenizer.json")
    gen.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for a batch)")
    gen.add_argument("--chat", action="store_true", help="wrap each prompt as a user message in the chat template")
    gen.add_argument("--system", help="system message for --chat")
    gen.add_argument("--max-tokens", type=positive(int), default=64, help="tokens to generate at most (default 64)")
    gen.add_argument("--temperature", type=float, default=0.0, help="sampling temperature; 0: greedy (default 0)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1: off)")
    gen.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (default 0: off)")
    gen.add_argument("--seed", type=int, help="sampling seed (default: unseeded)")
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                     help="weight and activation dtype (default: the checkpoint's)")
    gen.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    gen.add_argument("--kv-cache-gb", type=float, help="KV pool size (default: free GPU memory, or 0.5 GB on CPU)")
    gen.add_argument("--kv-codec", default="auto", help="KV page format: bf16, fp16, fp8, int8, int4, int4-gN "
                     "(default auto: the model's dtype); `agentkv kv-eval` measures what each costs in accuracy")
    gen.add_argument("--kv-tiers", help="tiers below the GPU, NAME=SIZE[@LOCATION] comma-separated, e.g. "
                     "dram=8GiB,disk=100GiB@/mnt/nvme/kv,redis=20GiB@redis://127.0.0.1:6379")
    gen.add_argument("--compile", action="store_true", help="torch.compile the model forward (CUDA)")
    gen.add_argument("--attention-backend", choices=["auto", "torch", "triton"], default="auto",
                     help="auto (default): Triton kernels on CUDA, the torch reference elsewhere")
    gen.add_argument("--json", action="store_true", help="print outputs as JSON")
    gen.set_defaults(run=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from agentkv.cli_errors import check_device, check_model_dir, engine_error

    if args.kv_tiers:  # the flags' own syntax first, then the folder they apply to
        from agentkv.storage.spec import parse_kv_tiers

        try:
            parse_kv_tiers(args.kv_tiers)
        except ValueError as e:
            raise UsageError(str(e).replace("kv_tiers", "--kv-tiers", 1)) from None
    if args.kv_codec != "auto":
        from agentkv.kvcache.sizing import codec

        try:
            codec(args.kv_codec)
        except ValueError as e:
            raise UsageError(f"--kv-codec: {e}") from None
    check_model_dir(args.model)
    if not os.path.isfile(os.path.join(args.model, "tokenizer.json")):
        raise UsageError(f"--model {args.model}: no tokenizer.json in the folder; `agentkv generate` takes text "
                         "prompts, so it needs the model's tokenizer")
    check_device(args.device)
    from agentkv.engine.llm import LLM
    from agentkv.engine.sequence import SamplingParams

    try:
        llm = LLM(args.model, dtype=args.dtype, device=args.device, compile=args.compile, kv_codec=args.kv_codec,
                  kv_cache_bytes=int(args.kv_cache_gb * 2**30) if args.kv_cache_gb else None,
                  kv_tiers=args.kv_tiers, attention_backend=args.attention_backend)
    except ValueError as e:
        raise engine_error(e, args.kv_tiers) from None
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed, stop=tuple(args.stop))
    if args.chat:
        system = [{"role": "system", "content": args.system}] if args.system else []
        outs = llm.chat([[*system, {"role": "user", "content": p}] for p in args.prompt], params)
    else:
        outs = llm.generate(list(args.prompt), params)
    if args.json:
        print(json.dumps([{"text": o.outputs[0].text, "token_ids": o.outputs[0].token_ids,
                           "finish_reason": o.outputs[0].finish_reason, "prompt_tokens": len(o.prompt_token_ids),
                           "cached_tokens": o.num_cached_tokens, "cached_tokens_per_tier": o.cached_tokens_per_tier}
                          for o in outs], indent=1))
    else:
        for o in outs:
            print(o.outputs[0].text)
    llm.close()
    return 0
