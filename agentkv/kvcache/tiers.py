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



@dataclass(slots=True, frozen=True)
class TierEntry:
    """One NAME=SIZE[@LOCATION] of a tier list."""

    name: str
    size: Size | None  # absolute; None: `times_gpu` times the GPU tier
    times_gpu: float = 0.0
    location: str | None = None  # a disk's folder, a Redis URL: what it must be is the caller's rule
    written: str = ""  # the part as the user wrote it, for the caller's errors


def parse_tier_list(text: str, flag: str, names: tuple[str, ...], multiples: bool = False,
                    about: str = "") -> list[TierEntry]:
    """The one tier-list syntax (`--kv-tiers`, `cache sweep --tiers`): NAME=SIZE[@LOCATION], comma-separated,
    each NAME once and one of `names`; SIZE in tokens (2M) or bytes (8GiB), or with `multiples` a multiple of
    the GPU tier (8x). Returned in the order of `names`; errors name `flag` and the part (`about`: what an
    unknown name's error adds)."""
    out: list[TierEntry] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ValueError(f"{flag} {text!r}: empty tier (write NAME=SIZE[@LOCATION], comma-separated)")
        name, eq, rest = part.partition("=")
        name = name.strip().lower()
        if not eq or name not in names:
            raise ValueError(f"{flag}: {part!r}: expected NAME=SIZE[@LOCATION] with NAME one of "
                             f"{', '.join(names)}{about}")
        if any(t.name == name for t in out):
            raise ValueError(f"{flag}: tier {name!r} given twice")
        size_text, at, location = rest.partition("@")
        size, times = _tier_size(size_text.strip().lower(), f"{flag}: {part!r}", multiples)
        out.append(TierEntry(name, size, times, location.strip() if at else None, part))
    return sorted(out, key=lambda t: names.index(t.name))


def _tier_size(text: str, where: str, multiples: bool) -> tuple[Size | None, float]:
    """(an absolute size, 0) or (None, a multiple of the GPU tier); positive either way."""
    if multiples and text.endswith("x"):
        try:
            size, times = None, float(text[:-1])
        except ValueError:
            raise ValueError(f"{where}: bad multiple of the GPU tier (write e.g. 8x)") from None
    else:
        try:
            size, times = parse_size(text), 0.0
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    if (size.value if size else times) <= 0:
        raise ValueError(f"{where}: size must be positive")
    return size, times
