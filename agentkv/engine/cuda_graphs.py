"""CUDA graphs for decode-only steps: the model's forward captured once per batch size, replayed each step.

A decode step of an 8B model is ~1,000 small kernels; launched from Python they cost more than they compute
at small batch. Captured, a step is one launch. A step of n decodes replays the smallest captured size ≥ n
from static input buffers: the real rows are copied in and the padding rows repeat row 0 (same token, position,
slot and pages), so they compute exactly row 0's K/V and write the same values to the same slot. No page is
set aside for padding, and nothing a padding row writes can differ from what row 0 writes.

The attention backend must launch from device tensors only, with a grid fixed at capture: TritonAttention
(its `capturing` fixes the decode split count for the longest context a graph will see). The torch reference
loops on host lists and is never captured.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from agentkv.kernels.attention import AttentionMetadata

SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


class DecodeGraphs:
    def __init__(self, forward: Callable[..., torch.Tensor], layers: list, backend, max_batch: int,
                 max_pages: int, block_size: int, kv_heads: int, device: torch.device) -> None:
        """forward(input_ids, positions, layers, meta) → hidden [T, hidden]: the model's forward."""
        self.forward, self.layers, self.backend = forward, layers, backend
        self.sizes = [s for s in SIZES if s < max_batch] + [max_batch]
        self.max_seq_len = max_pages * block_size
        self.kv_heads = kv_heads
        n = max_batch
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slots = torch.zeros(n, dtype=torch.long, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.query_start = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.tables = torch.zeros(n, max_pages, dtype=torch.int32, device=device)
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph | None, torch.Tensor | None]] = {}

    def meta(self, size: int) -> AttentionMetadata:
        """Metadata over the static buffers' first `size` rows (host fields: the capture-time bounds)."""
        return AttentionMetadata(self.slots[:size], self.query_start[: size + 1], self.seq_lens[:size],
                                 self.tables[:size], 0, 1, self.max_seq_len, list(range(size + 1)),
                                 [self.max_seq_len] * size)

    def capture(self) -> None:
        """Capture every size, largest first, sharing one memory pool (call after the KV pages exist)."""
        pool = torch.cuda.graph_pool_handle()
        for size in sorted(self.sizes, reverse=True):
            meta = self.meta(size)
            with self.backend.capturing(size, self.kv_heads, self.max_seq_len):
                side = torch.cuda.Stream()  # warm-up on a side stream (PyTorch's recipe): compiles the kernels,
                side.wait_stream(torch.cuda.current_stream())  # loads them and sizes library workspaces
                with torch.cuda.stream(side):
                    self._call(size, meta)
                torch.cuda.current_stream().wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=pool):
                    out = self._call(size, meta)
            self.graphs[size] = (graph, out)
        torch.cuda.synchronize()

    def _call(self, size: int, meta: AttentionMetadata) -> torch.Tensor:
        return self.forward(self.input_ids[:size], self.positions[:size], self.layers, meta)

    def size_for(self, n: int) -> int | None:
        return next((s for s in self.sizes if s >= n), None)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Hidden states [n, hidden] of a decode-only step of n ≤ max_batch sequences."""
        n = input_ids.shape[0]
        size = self.size_for(n)
        assert size is not None and meta.num_prefills == 0 and meta.max_query_len == 1
        width = meta.block_tables.shape[1]
        pad = size - n
        self.input_ids[:size] = torch.cat([input_ids, input_ids[:1].expand(pad)])
        self.positions[:size] = torch.cat([positions, positions[:1].expand(pad)])
        self.slots[:size] = torch.cat([meta.slot_mapping, meta.slot_mapping[:1].expand(pad)])
        self.seq_lens[:size] = torch.cat([meta.seq_lens, meta.seq_lens[:1].expand(pad)])
        self.tables[:n, :width] = meta.block_tables  # entries past a sequence's pages are never read
        self.tables[n:size, :width] = meta.block_tables[:1]
        graph, out = self.graphs.get(size, (None, None))
        if graph is None:  # not captured (CPU tests): the same padded buffers, run eagerly
            return self._call(size, self.meta(size))[:n]
        graph.replay()
        return out[:n]  # type: ignore[index]
