"""The `kv_tiers` string: `dram=8GiB,disk=100GiB@/mnt/nvme/kv,redis=20GiB@redis://host:6379`.

Each tier is NAME=SIZE[@LOCATION]: sizes as `cache sweep --tiers` reads them (bytes `8GiB`, or tokens `2M`);
`dram` takes no location, `disk` a directory, `redis` a redis:// (or rediss://, unix://) URL. Tiers may be
given in any order and are returned fastest first, mapped onto the policy core's tier names (redis is the
core's `remote` tier).
"""

from __future__ import annotations

from dataclasses import dataclass

from agentkv.kvcache.tiers import TIER_NAMES, Size, parse_size
from agentkv.storage.base import TierStore

_CORE_TIER = {"dram": "dram", "disk": "disk", "redis": "remote"}
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


@dataclass(slots=True, frozen=True)
class TierConfig:
    kind: str  # what the user wrote: dram, disk or redis
    size: Size
    location: str | None  # disk directory or Redis URL

    @property
    def core_name(self) -> str:
        return _CORE_TIER[self.kind]


def parse_kv_tiers(text: str) -> list[TierConfig]:
    out: list[TierConfig] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            raise ValueError(f"kv_tiers {text!r}: empty tier (write NAME=SIZE[@LOCATION], comma-separated)")
        name, eq, rest = part.partition("=")
        name = name.strip().lower()
        if not eq or name not in _CORE_TIER:
            raise ValueError(f"kv_tiers: {part!r}: expected NAME=SIZE[@LOCATION] with NAME one of "
                             f"{', '.join(_CORE_TIER)}")
        if any(t.kind == name for t in out):
            raise ValueError(f"kv_tiers: tier {name!r} given twice")
        size_text, at, location = rest.partition("@")
        try:
            size = parse_size(size_text)
        except ValueError as e:
            raise ValueError(f"kv_tiers: {part!r}: {e}") from None
        if size.value <= 0:
            raise ValueError(f"kv_tiers: {part!r}: size must be positive")
        location = location.strip() if at else None
        if name == "dram" and location is not None:
            raise ValueError(f"kv_tiers: {part!r}: dram takes no @LOCATION")
        if name == "disk" and not location:
            raise ValueError(f"kv_tiers: {part!r}: disk needs a directory, e.g. disk=100GiB@/mnt/nvme/agentkv")
        if name == "redis" and not (location or "").startswith(_REDIS_SCHEMES):
            raise ValueError(f"kv_tiers: {part!r}: redis needs a URL, e.g. redis=20GiB@redis://127.0.0.1:6379")
        out.append(TierConfig(name, size, location))
    return sorted(out, key=lambda t: TIER_NAMES.index(t.core_name))


def open_store(tier: TierConfig, capacity_bytes: float, page_bytes: int) -> TierStore:
    """The store behind a disk or redis tier (DRAM is the engine's host slab)."""
    if tier.kind == "disk":
        from agentkv.storage.disk import DiskStore

        return DiskStore(tier.location, capacity_bytes, page_bytes)  # type: ignore[arg-type]
    if tier.kind == "redis":
        from agentkv.storage.redis_store import RedisStore

        return RedisStore(tier.location, page_bytes)  # type: ignore[arg-type]
    raise ValueError(f"no standalone store for tier {tier.kind!r}")
