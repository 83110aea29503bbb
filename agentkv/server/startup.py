"""`agentkv serve` before and after the model loads: every flag and file checked first (loading a checkpoint
takes minutes; a typo should take a second), the listening socket bound first (a busy port is found before
the load, said in one line), and one summary of what is being served once it is up."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path
from typing import Any

from agentkv.cli_errors import UsageError, check_device, check_model_dir
from agentkv.limits import available_bytes, gib

POLICIES = ("lru", "lfu", "cost", "agent")  # online: the references (belady, infinite) need the future


def port(text: str) -> int:
    """argparse type of --port."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be in 1..65535, got {value}")
    return value


def check(args: argparse.Namespace) -> None:
    """Every flag and file `serve` reads, checked before the model loads; each error names its flag."""
    from agentkv.model.config import ModelConfig

    check_model_dir(args.model)
    check_device(args.device)
    if args.max_queue < 0:
        raise UsageError(f"--max-queue must be >= 0, got {args.max_queue}")
    if args.policy not in POLICIES:
        raise UsageError(f"--policy {args.policy}: serve runs an online policy: {', '.join(POLICIES)}")
    if args.kv_codec != "auto":
        from agentkv.kvcache.sizing import codec

        try:
            codec(args.kv_codec)
        except ValueError as e:
            raise UsageError(f"--kv-codec: {e}") from None
    if args.kv_tiers:
        from agentkv.storage.spec import parse_kv_tiers

        try:
            parse_kv_tiers(args.kv_tiers)
        except ValueError as e:
            raise UsageError(str(e).replace("kv_tiers", "--kv-tiers", 1)) from None
    limit = ModelConfig.from_dir(args.model).max_position_embeddings
    if args.max_model_len is not None and not 1 < args.max_model_len <= limit:
        raise UsageError(f"--max-model-len must be in [2, {limit}] (the model's context), got {args.max_model_len}")
    for path in args.public_prefix:
        if not _read(path, "--public-prefix").strip():
            raise UsageError(f"--public-prefix {path}: the file is empty")
    if args.kv_cache_gb:
        _check_kv_memory(args.kv_cache_gb, args.device)
    api_keys(args.api_keys)


def api_keys(path: str | None) -> dict[str, str] | None:
    from agentkv.server.tenants import load_api_keys

    if path is None:
        return None
    _read(path, "--api-keys")
    try:
        return load_api_keys(path)
    except ValueError as e:
        raise UsageError(f"--api-keys {e}") from None


def bind(host: str, number: int) -> socket.socket:
    """The listening socket, bound now: uvicorn is handed it once the model is up."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, number))
    except OSError as e:
        sock.close()
        busy = e.errno == 98  # EADDRINUSE
        flag = f"--port {number}" if busy else f"--host {host}"
        raise UsageError(f"{flag}: cannot listen on {host}:{number} ({e.strerror})"
                         + ("; another process holds the port: stop it or pick another --port" if busy else "")) \
            from None
    return sock


def summary(llm: Any, name: str, window: int, keys: dict[str, str] | None, public: int) -> str:
    """One line: what is served, where, with how much KV, in which format, over which tiers, for whom."""
    pool = llm.cache.tiers[0]
    tiers = ", ".join(f"{t.name} {t.capacity_blocks:,} blocks" for t in llm.cache.tiers[1:]) or "none"
    tenants = f"{len(set(keys.values()))} from --api-keys (keys required)" if keys else "one, open (no --api-keys)"
    template = "present" if llm.tokenizer is not None and llm.tokenizer.chat_template else \
        "none: /v1/chat/completions and /v1/messages will answer 400; /v1/completions works"
    dtype = str(llm.dtype).removeprefix("torch.")
    why = f"{llm.block_size_why}; " if llm.block_size_why else ""
    text_only = ", text only: its vision tower is not loaded" if llm.config.vision_tower else ""
    return (f"agentkv serve: model {name} ({llm.layers_text()}{text_only}, {dtype}) on {llm.device}; window "
            f"{window:,} tokens; KV pool {pool.capacity_blocks:,} blocks of {llm.block_size} tokens "
            f"({why}{gib(pool.capacity_blocks * pool.block_bytes)}), codec {llm.codec.name}; tiers below: {tiers}; "
            f"policy {llm.cache.policy.name}; tenants: {tenants}; public prefixes: {public}; chat template: {template}")


def _read(path: str, flag: str) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        why = getattr(e, "strerror", None) or "not UTF-8 text"
        raise UsageError(f"{flag} {path}: {why}") from None


def _check_kv_memory(kv_cache_gb: float, device: str | None) -> None:
    import torch

    where = device or ("cuda" if torch.cuda.is_available() else "cpu")
    have = torch.cuda.mem_get_info(torch.device(where))[0] if where.startswith("cuda") else available_bytes()
    need = kv_cache_gb * 2**30
    if have is not None and need > have:
        raise UsageError(f"--kv-cache-gb {kv_cache_gb:g}: a KV pool of {gib(need)} does not fit in the {gib(have)} "
                         f"free on {where} (before the weights)")
