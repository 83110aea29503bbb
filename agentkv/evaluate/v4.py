"""kv-eval's caches for DeepSeek-V4: its layers attend over its own page groups (engine/compressed.py: raw
windows, compressed entries with fp4 indexer keys, compressor tails), not through an attention backend, so the
eval builds those pages for each codec, and records each layer's attention input and output with hooks to
measure a codec layer by layer on the reference's inputs (as the other families' q/k/v)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from agentkv.codecs import KVCodec
from agentkv.engine.compressed import CompressedLayout, CompressorTails, raw_window_fields
from agentkv.engine.pages import PageLayout
from agentkv.kernels.attention import AttentionMetadata, SeqSlice, TorchAttention


class V4Pages:
    """One sequence's pages 0, 1, ... (slot = position) in both of V4's page groups, and one tail row."""

    def __init__(self, model: Any, impl: dict[str, KVCodec], tokens: int, block_size: int) -> None:
        self.model, self.config, self.impl, self.block_size = model, model.config, impl, block_size
        self.device = next(model.parameters()).device
        self.pages = -(-tokens // block_size)
        self.backend = TorchAttention()  # builds the metadata (its block tables) only
        self.backend.bind(1, self.pages, self.device)

    def layers(self, name: str, apart: bool = False) -> list[Any]:
        codec, v4, bs = self.impl[name], self.config.v4, self.block_size
        entries = CompressedLayout.of_model(codec, v4, bs)
        window = PageLayout(codec, self.config.num_layers, raw_window_fields(codec, v4, bs), ())
        tails = CompressorTails(v4, 1, self.device)
        tails.step.rows, tails.step.valid_from = [0], [0]

        def slab(page_bytes: int) -> torch.Tensor:
            return torch.zeros(self.pages, page_bytes, dtype=torch.uint8, device=self.device)

        return tails.layers(window.views(slab(window.page_bytes), group=1), entries.views(slab(entries.page_bytes)))

    def meta(self, a: int, b: int) -> tuple[torch.Tensor, AttentionMetadata]:
        meta = self.backend.prepare([SeqSlice(0, list(range(self.pages)), b - a, b)], 1, self.block_size)
        meta.groups = (meta,)  # the raw windows' pages are numbered as the entries' here
        return torch.arange(a, b, device=self.device), meta

    @contextmanager
    def recording(self) -> Iterator[list[Any]]:
        record: list[tuple[torch.Tensor, torch.Tensor]] = []
        hooks = [layer.attn.register_forward_hook(lambda _, args, out: record.append((args[0], out)))
                 for layer in self.model.model.layers]
        try:
            yield record
        finally:
            for hook in hooks:
                hook.remove()

    def errors(self, codec: KVCodec, record: list[Any], layers: list[Any], a: int, b: int, meta: AttentionMetadata,
               sums: Any) -> None:
        """Each layer's attention on the reference's input over this codec's pages, against the reference's output."""
        m, kinds = self.model.model, self.config.v4.kinds
        pos = torch.arange(a, b, device=self.device)
        for i, ((x, want), kv, layer) in enumerate(zip(record, layers, m.layers, strict=True)):
            rotary = m.rotary if kinds[i] == "sliding" else m.compress_rotary
            with torch.no_grad():
                got = layer.attn(x, pos, rotary, kv, meta).float()
            sums.err[i] += float((got - want.float()).pow(2).sum())
            sums.ref[i] += float(want.float().pow(2).sum())
