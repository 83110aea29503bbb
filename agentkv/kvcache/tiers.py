"""Tiers of KV memory and their capacities, in tokens (`256k`) or bytes (`16GiB`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

TIER_NAMES = ("gpu", "dram", "disk", "remote")  # fastest first; any subset, in this order
# the link a copy between a tier and the GPU crosses (a demotion t → t+1 crosses t+1's): bandwidths in sim/stepcost
TIER_LINKS = {"gpu": "hbm", "dram": "host", "disk": "nvme", "remote": "network"}
_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
          "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12}


@dataclass(slots=True, frozen=True)
class TierSpec:
    name: str
    capacity_bytes: float
    block_bytes: int

    @property
    def capacity_blocks(self) -> int:
        return int(self.capacity_bytes // self.block_bytes)


@dataclass(slots=True, frozen=True)
class Size:
    """A capacity as the user wrote it: tokens (`256k`) or bytes (`16GiB`, `40GB`)."""

    value: float
    is_bytes: bool

    def to_bytes(self, bytes_per_token: float) -> float:
        return self.value if self.is_bytes else self.value * bytes_per_token

    def __str__(self) -> str:
        return format_size(self)


def parse_size(text: str) -> Size:
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"bad capacity {text!r}: use tokens (256k, 2M) or bytes (16GiB, 40GB)")
    unit = m.group(2).lower()
    return Size(float(m.group(1)) * _UNITS[unit], is_bytes=unit.endswith("b"))


def format_size(s: Size) -> str:
    if s.is_bytes:
        return f"{s.value / 2**30:g}GiB"
    for unit, scale in (("M", 1e6), ("k", 1e3)):
        if s.value >= scale:
            return f"{s.value / scale:g}{unit}"
    return f"{s.value:g}"

