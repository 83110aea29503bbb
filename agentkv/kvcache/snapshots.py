"""Which block boundaries keep a linear-attention layer's state: the policy's decision, returned as data.

A gated DeltaNet (or Mamba) layer has no per-token KV to share: a prefix hit at block boundary B needs the
layer's state after exactly B blocks. Keeping it at every boundary would cost a whole state per block, so, as
SGLang's Mamba radix cache does, only some boundaries keep one; a hit falls back to the deepest boundary that
has one and recomputes from there. The engine asks for each span of a sequence it computes and copies the
states where told (`engine/state_slots.py`); a snapshot ages out as the pages' blocks do (least recently used).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Snapshot:
    """Keep the state after `block` blocks. `latest`: only the sequence's newest such snapshot is kept (the end of
    a reply so far: the next turn's prompt extends it), the one before it dropped when this one is taken."""

    block: int
    latest: bool = False


def snapshot_points(start: int, end: int, prompt_len: int, block_size: int, every: int) -> list[Snapshot]:
    """Boundaries in (start, end] (token positions of a span a sequence computes now) to snapshot: every `every`-th
    block (0: none), the prompt's deepest boundary a repeat of it can hit (its last token is always recomputed),
    and past the prompt the span's last boundary, as `latest`."""
    repeat = (prompt_len - 1) // block_size
    first, last = start // block_size + 1, end // block_size
    points = [Snapshot(b) for b in range(first, last + 1) if b == repeat or (every and b % every == 0)]
    if last >= first and last * block_size > prompt_len and (not points or points[-1].block != last):
        points.append(Snapshot(last, latest=True))
    return points
