"""`agentkv kv-eval`: flags, the table and the JSON. The measurement itself is agentkv.evaluate.codecs (torch)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from agentkv.cli_errors import UsageError, check_device, check_model_dir, positive


def add_parser(sub: Any) -> None:
    p = sub.add_parser("kv-eval", help="what KV codecs do to a checkpoint's outputs (KL, top-1, perplexity) "
                                       "and how many 96k contexts they fit per GPU")
    p.add_argument("--model", required=True, help="checkpoint folder (config.json, safetensors, tokenizer.json) "
                                                  "of any family `agentkv serve` loads")
    p.add_argument("--codecs", default="fp8,int8,int4",
                   help="comma-separated: fp8, int8, int4, int4-gN, int4-kivi, fp16 (default fp8,int8,int4); "
                        "always measured against bf16")
    p.add_argument("--text", help="UTF-8 text file to score (default: held-out Python standard library modules)")
    p.add_argument("--context", type=positive(int), help="tokens per window (default: the model's maximum)")
    p.add_argument("--windows", type=positive(int), default=4, help="windows of --context tokens (default 4)")
    p.add_argument("--chunk", type=positive(int), default=512, help="prefill chunk in tokens (default 512)")
    p.add_argument("--block-size", type=positive(int),
                   help="tokens per KV page (default 16, or what the model needs: for DeepSeek-V4 the least "
                        "multiple of its compression ratios above 16)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=["bfloat16", "float16", "float32"],
                   help="compute dtype (default: float32 on CPU, bfloat16 on GPU)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(run=cmd_kv_eval)


def codec_list(text: str) -> list[str]:
    from agentkv.kvcache.sizing import codec

    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise UsageError("--codecs: give at least one codec, e.g. fp8,int8,int4")
    for name in names:
        try:
            codec(name)
        except ValueError as e:
            raise UsageError(f"--codecs: {e}") from None
    return names


def read_text(path: str | None, chars: int) -> tuple[str, str]:
    if path is None:
        from agentkv.codecs.corpus import stdlib_text

        return stdlib_text("heldout", chars), "held-out Python standard library modules"
    if not os.path.isfile(path):
        raise UsageError(f"--text {path}: no such file")
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read(), path


def cmd_kv_eval(args: argparse.Namespace) -> int:
    check_model_dir(args.model)
    check_device(args.device)
    names = codec_list(args.codecs)
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from agentkv.evaluate.codecs import evaluate, to_json
    from agentkv.model.config import ModelConfig

    window = ModelConfig.from_dir(args.model).max_position_embeddings
    if args.context and args.context > window:
        print(f"kv-eval: --context {args.context:,} is over the model's window: {window:,} tokens per window "
              "(its max_position_embeddings)", file=sys.stderr)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    text, name = read_text(args.text, (args.context or 4096) * args.windows * 8)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as progress:
        ev = evaluate(args.model, names, text, name, args.context, args.windows, args.chunk, args.block_size,
                      device, args.dtype, progress)
    if args.json:
        print(json.dumps(to_json(ev), indent=2))
    else:
        console = Console()
        if not console.is_terminal:  # a file or a pipe: the whole table, unwrapped
            console = Console(width=200)
        console.print(table(ev))
        console.print(fit_table(ev))
    return 0


def table(ev: Any):
    """One row per codec: its bytes and its quality against bf16."""
    from rich.table import Table

    t = Table(title=f"kv-eval: {ev.model} on {ev.text} ({ev.tokens:,} tokens in {ev.windows} windows of "
                    f"{ev.context:,}; {ev.device})", caption="attn err: attention-output relative error on the "
              "bf16 run's Q/K/V (mean over layers, worst layer); KL, top-1, ppl: every layer on the codec's KV")
    for name in ("KV codec", "bytes/token", "attn err", "KL (nats)", "top-1", "ppl (change)"):
        t.add_column(name, justify="left" if name == "KV codec" else "right", no_wrap=name == "KV codec")
    for r in ev.results:
        worst = max(range(len(r.attn_rel_err)), key=r.attn_rel_err.__getitem__)
        err = (f"{sum(r.attn_rel_err) / len(r.attn_rel_err):.2%} (L{worst} {r.attn_rel_err[worst]:.2%})"
               if any(r.attn_rel_err) else "reference")
        t.add_row(r.codec, f"{r.bytes_per_token:,.0f}", err, f"{r.kl:.3g}", f"{r.top1:.2%}",
                  f"{r.ppl:.3f} ({r.ppl_change:+.2%})")
    return t


def fit_table(ev: Any):
    """What each codec buys in room: 96k-token contexts per GPU, one row per catalog model and codec, one column
    per GPU (fp8 weights, the TP from 1 to 8 that fits most, KV replicated across ranks counted)."""
    from rich.table import Table

    models = list(ev.results[0].contexts_per_gpu)
    gpus = list(ev.results[0].contexts_per_gpu[models[0]])
    t = Table(title="96k-token contexts per GPU, by KV codec", caption="fp8 weights, the TP (1-8) that fits most, "
              "KV replicated across ranks counted; -: the weights do not fit on 8 GPUs")
    t.add_column("model", no_wrap=True)
    t.add_column("KV codec", no_wrap=True)
    for g in gpus:
        t.add_column(g, justify="right")
    for m in models:
        for r in ev.results:
            t.add_row(m, r.codec, *(_count(r.contexts_per_gpu[m][g]) for g in gpus))
    return t


def _count(n: float | None) -> str:
    return "-" if n is None else f"{n:.0f}" if n >= 10 else f"{n:.1f}"
