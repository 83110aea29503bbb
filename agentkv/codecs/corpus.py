"""Real text that is on every machine: the Python standard library's own sources (code, like agents' traffic).

`bench/train_tiny.py` trains on the `train` split and `agentkv kv-eval` measures on the `heldout` split, so
quality figures come from text the model never saw, without downloading anything.
"""

from __future__ import annotations

import sysconfig
import zlib
from pathlib import Path

HELDOUT_EVERY = 16  # one module in 16 (by a stable hash of its path) is held out


def stdlib_files(split: str) -> list[Path]:
    """The standard library's .py files of one split ('train' or 'heldout'), in a stable order."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)
    held = [zlib.crc32(str(p.relative_to(root)).encode()) % HELDOUT_EVERY == 0 for p in files]
    return [p for p, h in zip(files, held, strict=True) if h == (split == "heldout")]


def stdlib_text(split: str, max_chars: int | None = None) -> str:
    parts, total = [], 0
    for p in stdlib_files(split):
        text = p.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        total += len(text)
        if max_chars is not None and total >= max_chars:
            break
    return "\n".join(parts)[:max_chars]
