"""Catalogs kept as editable data files (agentkv/data/*.toml): models, hardware, prices.

Every entry carries its public source. Pass your own file to override or extend the built-in one; entries are
plain dataclasses so the rest of the code never reads TOML.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(slots=True, frozen=True)
class ModelSpec:
    name: str
    source: str
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    intermediate: int
    vocab: int
    params_total: float
    params_active: float
    context: int
    mla_latent: int = 0
    mla_rope_dim: int = 0

    @property
    def is_mla(self) -> bool:
        return self.mla_latent > 0

    @property
    def is_moe(self) -> bool:
        return self.params_active < self.params_total


@dataclass(slots=True, frozen=True)
class HardwareSpec:
    name: str
    source: str
    bf16_flops: float
    fp8_flops: float
    hbm_bytes: float
    hbm_bw: float
    host_link_bw: float
    dram_bytes: float
    nvme_bw: float
    interconnect_bw: float
    network_bw: float


def read_toml(name: str, path: str | None = None) -> dict[str, Any]:
    """The built-in `agentkv/data/{name}.toml`, or the file at `path` when given."""
    if path:
        with open(path, "rb") as f:
            return tomllib.load(f)
    return tomllib.loads(resources.files("agentkv.data").joinpath(f"{name}.toml").read_text())


def entries(cls: type[T], raw: dict[str, Any], what: str) -> dict[str, T]:
    """Each table of `raw` as a `cls`, with errors naming the entry and field."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    out = {}
    for name, table in raw.items():
        unknown = sorted(set(table) - known)
        if unknown:
            raise ValueError(f"{what} '{name}': unknown field '{unknown[0]}'")
        try:
            out[name] = cls(name=name, **table)  # type: ignore[call-arg]
        except TypeError as e:
            raise ValueError(f"{what} '{name}': {e}") from None
    return out


def lookup(table: dict[str, T], name: str, what: str) -> T:
    if name not in table:
        raise ValueError(f"unknown {what} '{name}' (known: {', '.join(sorted(table))})")
    return table[name]


def models(path: str | None = None) -> dict[str, ModelSpec]:
    return entries(ModelSpec, read_toml("models", path), "model")


def model(name: str, path: str | None = None) -> ModelSpec:
    return lookup(models(path), name, "model")


def hardware_table(path: str | None = None) -> dict[str, HardwareSpec]:
    return entries(HardwareSpec, read_toml("hardware", path), "hardware")


def hardware(name: str, path: str | None = None) -> HardwareSpec:
    return lookup(hardware_table(path), name, "hardware")


def prices(path: str | None = None) -> dict[str, Any]:
    return read_toml("prices", path)
