"""`agentkv replay` against `agentkv serve` on this machine: shared claude-code sessions, token-scaled, served by a
random-weight small Llama. Prints what the replay measures (cached share beside the policy core's prediction,
TTFT, TPOT, E2E, tokens/s) for the sessions run one request at a time (where the prediction is exact) and
several at once, and, as the baseline of the same run, the same traffic with nothing to hit (`--no-reuse`).

    python -m bench.replay_serve [--sessions 6] [--turns 8] [--concurrency 3] [--kv-tokens 8192]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench._common import TRACES, machine

SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "[UNK]"]


def write_model(folder: Path, layers: int, hidden: int, max_len: int) -> Path:
    """A random-weight Llama with a word-level tokenizer over the replay's built-in words."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaForCausalLM

    from agentkv.replay.alphabet import BUILTIN

    vocab = {t: i for i, t in enumerate([*SPECIAL, *BUILTIN])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(SPECIAL)
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", 0)])
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": SPECIAL[0], "eos_token": SPECIAL[1]}))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=max_len,
                      bos_token_id=0, eos_token_id=1)
    LlamaForCausalLM(cfg).float().eval().save_pretrained(str(folder))
    return folder


def start_server(model: Path, kv_gb: float, block: int, *extra: str) -> tuple[subprocess.Popen, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "agentkv.cli", "serve", "--model", str(model), "--port", str(port),
                             "--kv-cache-gb", f"{kv_gb:.6f}", "--block-size", str(block), "--policy", "lru",
                             "--max-batched-tokens", "4096", "--log-level", "warning", *extra])
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/health", timeout=1):
                return proc, url
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("agentkv serve exited") from None
            time.sleep(0.2)
    raise SystemExit("agentkv serve did not come up")


def replay(url: str, model: Path, out: Path, args: argparse.Namespace, *flags: str) -> dict:
    from agentkv.cli import main as agentkv

    files = sorted(str(p) for p in (TRACES / "claude-code").iterdir())[: args.sessions]
    rc = agentkv(["replay", *files, "--endpoint", url, "--tokenizer", str(model), "--token-scale", str(args.token_scale),
                  "--time-scale", str(args.time_scale), "--max-turns", str(args.turns), "--max-tokens", "32",
                  "--predict", "lru", "--out", str(out), *flags])
    if rc != 0:
        raise SystemExit(f"agentkv replay exited {rc}")
    return json.loads((out / "summary.json").read_text())


def row(name: str, s: dict) -> str:
    pct = lambda x: "-" if x is None else f"{100 * x:.2f}%"  # noqa: E731
    err = sum(s["errors"].values())
    return (f"| {name} | {s['ok']}/{s['requests']} | {err} | {pct(s['cached_share'])} | {pct(s['predicted_share'])} "
            f"| {s['ttft_s']['p50']:.3f} / {s['ttft_s']['p90']:.3f} | {1e3 * s['tpot_s']['p50']:.1f} "
            f"| {s['e2e_s']['p50']:.2f} | {s['input_tok_s']:,.0f} | {s['duration_s']:.0f} s |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=6)
    p.add_argument("--turns", type=int, default=8)
    p.add_argument("--token-scale", type=float, default=1 / 32)
    p.add_argument("--time-scale", type=float, default=0.01)
    p.add_argument("--concurrency", type=int, default=3)
    p.add_argument("--kv-tokens", type=int, default=8192, help="the server's KV capacity")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=128)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="replay-bench-"))
    model = write_model(work / "model", args.layers, args.hidden, 16384)
    bytes_per_token = args.layers * 2 * 2 * (args.hidden // 8) * 4  # K and V, 2 KV heads, fp32
    proc, url = start_server(model, args.kv_tokens * bytes_per_token / 2**30 + 1e-6, 16)
    c = str(args.concurrency)
    try:
        # each run its own --seed: its text matches nothing an earlier run left in the server's cache
        runs = [(f"{c} sessions, one request at a time",
                 replay(url, model, work / "serial", args, "--concurrency", c, "--max-inflight", "1", "--seed", "1")),
                (f"{c} sessions at once",
                 replay(url, model, work / "conc", args, "--concurrency", c, "--max-inflight", c, "--seed", "2")),
                (f"{c} at once, --no-reuse (baseline)",
                 replay(url, model, work / "base", args, "--concurrency", c, "--max-inflight", c, "--no-reuse"))]
    finally:
        proc.terminate()
        proc.wait(60)
    print(f"\nmachine: {machine()}; model: random-weight Llama ({args.layers} layers, {args.hidden} hidden, GQA 8/2, "
          f"fp32) on CPU; KV {args.kv_tokens:,} tokens in blocks of 16, LRU")
    print(f"trace: first {args.turns} turns of {args.sessions} claude-code sessions, --token-scale "
          f"{args.token_scale:g}, --time-scale {args.time_scale:g}\n")
    print("| run | ok/sent | errors | cached, measured | cached, predicted | TTFT p50 / p90 (s) | TPOT p50 (ms) "
          "| E2E p50 (s) | input tok/s | wall |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, s in runs:
        print(row(name, s))
    base, conc = runs[2][1], runs[1][1]
    print(f"\nTTFT p50 with the prefix cache vs without, same traffic: {base['ttft_s']['p50'] / conc['ttft_s']['p50']:.2f}x "
          f"lower; input tokens/s {conc['input_tok_s'] / base['input_tok_s']:.2f}x")
    print(f"outputs in {work}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
