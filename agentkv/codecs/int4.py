"""int4 KV, asymmetric: x ≈ code × scale + offset, codes 0..15 packed two to a byte (even dims in the low
nibble), an fp16 scale and offset per group of values. Three layouts of the same arithmetic:

- `int4` (group = head_dim): per token and head, as lmdeploy ships it; 0.53 bytes a value at head_dim 128.
- `int4-gN`: groups of N values of a head vector: finer, costs 4/N bytes a value more.
- `int4-kivi`: KIVI's split. Keys get a scale and offset per channel per block, since key outliers sit in
  fixed channels; values stay per token. A channel's scale needs all of its block's tokens, so a block's keys
  are quantized when its last token is written (sealed). Until then, the partial last block's keys stay in
  full precision in a residual the codec holds beside the pool, one block per running sequence and layer
  (KIVI's full-precision window, one block long); a sequence that ends mid-block leaves its residual until
  the page is written again, so there is at most one per page. A partial block is private to its sequence: the engine
  never shares it, caches it or moves it between tiers. Each block's keys carry an int32 tag in the page
  (0: sealed; otherwise the id of the residual holding them), so a page that arrives by copy, or whose
  residual is not in this process, is never decoded from stale memory: it raises.
"""

from __future__ import annotations

import itertools

import torch

from agentkv.codecs.base import KVCodec, PageField, fp16_down, fp16_up, split_slots
from agentkv.kvcache.sizing import CodecSpec


def quantize(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes (uint8, 0..15), scale and offset (fp32 holding fp16 values) of x over dimension `dim`."""
    x = x.to(torch.float32, copy=True)  # worked on in place below
    lo, hi = torch.aminmax(x, dim=dim, keepdim=True)
    lo = fp16_down(lo)
    scale = fp16_up((hi - lo) / 15)
    code = x.sub_(lo).div_(torch.where(scale > 0, scale, 1.0)).round_().clamp_(0, 15).to(torch.uint8)
    return code, scale, lo


def pack(code: torch.Tensor) -> torch.Tensor:
    return code[..., 0::2] | (code[..., 1::2] << 4)


def unpack(data: torch.Tensor) -> torch.Tensor:
    return torch.stack([data & 15, data >> 4], dim=-1).flatten(-2)


def step_bound(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Half a step of `quantize` over `dim`: the fp16 roundings of offset and scale included."""
    x = x.float()
    lo, hi = x.amin(dim, keepdim=True), x.amax(dim, keepdim=True)
    span = hi - lo + lo.abs() * 2.0**-10 + 2.0**-24
    return (span / 15 * (1 + 2.0**-10) + 2.0**-24) * 0.5 * (1 + 2.0**-12) + x.abs().amax(dim, keepdim=True) * 2.0**-22


class Int4(KVCodec):
    """Per group of `spec.group` values (0: the whole head vector) of each token and head."""

    def __init__(self, spec: CodecSpec) -> None:
        self.name, self.spec = spec.name, spec

    def fields(self, block_size: int, kv_heads: int, head_dim: int) -> tuple[PageField, ...]:
        groups = head_dim // self.spec.group_size(head_dim)
        return (PageField("scale", torch.float16, (block_size, kv_heads, groups)),
                PageField("offset", torch.float16, (block_size, kv_heads, groups)),
                PageField("data", torch.uint8, (block_size, kv_heads, head_dim // 2)))

    def _grouped(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (-1, self.spec.group_size(x.shape[-1])))

    def encode_into(self, fields: dict[str, torch.Tensor], slots: torch.Tensor, x: torch.Tensor) -> None:
        code, scale, lo = quantize(self._grouped(x), -1)
        p, o = split_slots(fields, slots)
        fields["scale"][p, o] = scale.squeeze(-1).half()
        fields["offset"][p, o] = lo.squeeze(-1).half()
        fields["data"][p, o] = pack(code.flatten(-2))

    def decode(self, fields: dict[str, torch.Tensor], pages: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        x = self._grouped(unpack(fields["data"][pages]).float())
        x.mul_(fields["scale"][pages].float()[..., None]).add_(fields["offset"][pages].float()[..., None])
        return x.flatten(-2).to(dtype)

    def bound(self, x: torch.Tensor, keys: bool = False, block_size: int = 16) -> torch.Tensor:
        return step_bound(self._grouped(x), -1).expand_as(self._grouped(x)).flatten(-2)


class Int4Kivi(KVCodec):
    """Keys per channel per block (sealed when the block fills; full precision until then), values per token."""

    def __init__(self, spec: CodecSpec) -> None:
        self.name, self.spec = spec.name, spec
        self.values = Int4(CodecSpec(spec.name, 4, scale_bytes=4))
        self._ids = itertools.count(1)
        self._open: dict[tuple[int, int], tuple[int, torch.Tensor]] = {}  # (field address, page) → (tag, keys)

    def fields(self, block_size: int, kv_heads: int, head_dim: int) -> tuple[PageField, ...]:
        raise ValueError("int4-kivi lays out keys and values differently: use key_fields and value_fields")

    def key_fields(self, block_size: int, kv_heads: int, head_dim: int) -> tuple[PageField, ...]:
        self.spec.group_size(head_dim)
        if block_size * kv_heads * head_dim % 8:
            raise ValueError(f"int4-kivi: block_size × kv_heads × head_dim = {block_size * kv_heads * head_dim} "
                             "must be a multiple of 8 (the int32 tag after the packed keys stays aligned)")
        return (PageField("data", torch.uint8, (block_size, kv_heads, head_dim // 2)),
                PageField("scale", torch.float16, (kv_heads, head_dim)),
                PageField("offset", torch.float16, (kv_heads, head_dim)),
                PageField("tag", torch.int32, (1,)))

    def value_fields(self, block_size: int, kv_heads: int, head_dim: int) -> tuple[PageField, ...]:
        return self.values.fields(block_size, kv_heads, head_dim)

    def encode_into(self, fields: dict[str, torch.Tensor], slots: torch.Tensor, x: torch.Tensor) -> None:
        if "tag" not in fields:
            return self.values.encode_into(fields, slots, x)
        p, o = split_slots(fields, slots)
        bs = fields["data"].shape[1]
        pages, counts = torch.unique(p, return_counts=True)
        whole = pages[counts == bs]
        if len(whole):  # blocks written whole in this call (prefill) are sealed at once
            mine = torch.isin(p, whole)
            keys = x.new_empty(len(whole), bs, *x.shape[1:])
            keys[torch.searchsorted(whole, p[mine]), o[mine]] = x[mine]
            self._seal(fields, whole, keys)
        for page in pages[counts < bs].tolist():
            mine = p == page
            self._write_partial(fields, page, o[mine], x[mine])

    def _write_partial(self, fields: dict[str, torch.Tensor], page: int, offsets: torch.Tensor,
                       x: torch.Tensor) -> None:
        key, bs = (fields["data"].data_ptr(), page), fields["data"].shape[1]
        if int(offsets.min()) == 0:  # a block starts: a fresh residual
            tag, keys = next(self._ids) % 2**31 or 1, x.new_zeros(bs, *x.shape[1:])
        elif int(fields["tag"][page, 0]) == 0:  # a sealed block is immutable: this is the engine recomputing
            return  # the last token of a fully cached prompt, whose keys the block already holds
        else:
            tag, keys = self._residual(fields, page)
        keys[offsets] = x.to(keys.dtype)
        if int(offsets.max()) == bs - 1:
            self._seal(fields, torch.tensor([page], device=x.device), keys[None])
        else:
            self._open[key] = (tag, keys)
            fields["tag"][page] = tag

    def _residual(self, fields: dict[str, torch.Tensor], page: int) -> tuple[int, torch.Tensor]:
        tag = int(fields["tag"][page, 0])
        entry = self._open.get((fields["data"].data_ptr(), page))
        if tag == 0 or entry is None or entry[0] != tag:
            raise RuntimeError(f"int4-kivi: page {page} holds a partial block whose full-precision keys are not "
                               "in this codec (a partial block was copied or moved)")
        return entry

    def _seal(self, fields: dict[str, torch.Tensor], pages: torch.Tensor, keys: torch.Tensor) -> None:
        """keys [n, block_size, kv_heads, head_dim] of whole blocks → per-channel codes."""
        if self._open:  # a page sealed whole drops the stale residual of a sequence that ended on it
            ptr = fields["data"].data_ptr()
            for page in pages.tolist():
                self._open.pop((ptr, page), None)
        code, scale, lo = quantize(keys, 1)
        fields["scale"][pages] = scale.squeeze(1).half()
        fields["offset"][pages] = lo.squeeze(1).half()
        fields["data"][pages] = pack(code)
        fields["tag"][pages] = 0

    def decode(self, fields: dict[str, torch.Tensor], pages: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if "tag" not in fields:
            return self.values.decode(fields, pages, dtype)
        x = unpack(fields["data"][pages]).float()
        x = x.mul_(fields["scale"][pages].float()[:, None]).add_(fields["offset"][pages].float()[:, None]).to(dtype)
        partial = (fields["tag"][pages, 0] != 0).nonzero().flatten().tolist()
        for i in partial:
            x[i] = self._residual(fields, int(pages[i]))[1].to(dtype)
        return x

    def bound(self, x: torch.Tensor, keys: bool = False, block_size: int = 16) -> torch.Tensor:
        if not keys:
            return self.values.bound(x)
        whole = x.shape[0] // block_size * block_size
        sealed = x[:whole].unflatten(0, (-1, block_size))
        b = step_bound(sealed, 1).expand_as(sealed).flatten(0, 1)
        return torch.cat([b, x[whole:].float().abs() * 2.0**-8])  # the residual: the compute dtype's rounding
