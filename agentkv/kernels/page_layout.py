"""What a kernel needs to read one codec's pages: the data tensor, its scales and offsets, and their strides.

A codec's fields are views into the pool's byte slab (a page is one row of it), so the kernels address every
field by its own strides and never assume a contiguous tensor. Scales are addressed as (page, token, head,
group of `group` dims): per-token-and-head (fp8, int8, int4), per-group (int4-gN) and per-channel layouts
differ only in strides, so the kernels have one decoding path per storage kind, not one per codec.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentkv.codecs import KVCodec

PLAIN, SCALED, INT4 = 0, 1, 2  # values as stored; code × scale; packed 4-bit codes, code × scale + offset
_NONE = (0, 0, 0, 0)


@dataclass(slots=True)
class KernelPages:
    quant: int
    group: int  # head dims sharing one scale (1 for PLAIN)
    data: torch.Tensor
    data_strides: tuple[int, int, int]  # page, token, head (the head dim itself is contiguous)
    scale: torch.Tensor
    scale_strides: tuple[int, int, int, int]  # page, token, head, group
    offset: torch.Tensor
    offset_strides: tuple[int, int, int, int]


def _strides(t: torch.Tensor, what: str) -> tuple[int, int, int, int]:
    if t.dim() != 4 or t.stride(3) != 1:
        raise ValueError(f"{what}: expected [pages, block_size, kv_heads, n] with a contiguous last dim, "
                         f"got shape {tuple(t.shape)} strides {t.stride()}")
    return t.stride()  # type: ignore[return-value]


KNOWN = {"data", "scale", "offset"}


def unsupported(codec: KVCodec, head_dim: int = 128) -> str | None:
    """Why the kernels cannot read this codec's pages of `head_dim`-value vectors, or None. A scale shared by a
    group of values within a vector is read as a [groups, group] tile of the vector padded to a power of two,
    which lines up only where the vector is one (MLA's latent + RoPE key is not: DeepSeek-V3's 512 + 64, as
    `agentkv/data/models.toml` cites its config.json)."""
    fields = (*codec.key_fields(16, 1, head_dim), *codec.value_fields(16, 1, head_dim))
    names = {f.name for f in fields}
    if "tag" in names:
        return (f"KV codec {codec.name} keeps a partial block's keys beside the pages, in full precision, where "
                "the Triton kernels cannot read them: use the torch attention backend")
    if names - KNOWN:
        return f"KV codec {codec.name} has fields {sorted(names - KNOWN)} the Triton kernels do not know"
    if head_dim & (head_dim - 1) and any(f.name == "scale" and f.shape[-1] > 1 for f in fields):
        return (f"KV codec {codec.name} (--kv-codec) keeps a scale per group of values within each "
                f"{head_dim}-value vector the model attends over (not a power of two), which the Triton kernels "
                "cannot read: use --attention-backend torch, or a codec with one scale a vector (fp8, int8, int4)")
    return None


def kernel_pages(codec: KVCodec, fields: dict[str, torch.Tensor]) -> KernelPages:
    """The kernels' view of one layer's K (or V) pages under `codec`."""
    if set(fields) - KNOWN:
        raise NotImplementedError(unsupported(codec) or f"KV codec {codec.name}: unknown fields {sorted(fields)}")
    data = fields["data"]
    ds = _strides(data, f"codec {codec.name}: field 'data'")[:3]
    if "scale" not in fields:
        return KernelPages(PLAIN, 1, data, ds, data, _NONE, data, _NONE)
    scale = fields["scale"]
    ss = _strides(scale, f"codec {codec.name}: field 'scale'")
    if "offset" not in fields:  # fp8 / int8: a scale per token and head
        return KernelPages(SCALED, data.shape[3] // scale.shape[3], data, ds, scale, ss, data, _NONE)
    offset = fields["offset"]
    return KernelPages(INT4, 2 * data.shape[3] // scale.shape[3], data, ds, scale, ss, offset,
                       _strides(offset, f"codec {codec.name}: field 'offset'"))
