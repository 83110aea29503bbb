"""The `kv_tiers` string: `dram=8GiB,disk=100GiB@/mnt/nvme/kv,redis=20GiB@redis://host:6379`.

Each tier is NAME=SIZE[@LOCATION]: sizes as `cache sweep --tiers` reads them (bytes `8GiB`, or tokens `2M`);
`dram` takes no location, `disk` a directory, `redis` a redis:// (or rediss://, unix://) URL. Tiers may be
given in any order and are returned fastest first, mapped onto the policy core's tier names (redis is the
core's `remote` tier).
"""

from __future__ import annotations

from dataclasses import dataclass

from agentkv.kvcache.tiers import Size, parse_tier_list
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
    out = []
    for t in parse_tier_list(text, "kv_tiers", tuple(_CORE_TIER)):
        where = f"kv_tiers: {t.written!r}"
        if t.name == "dram" and t.location is not None:
            raise ValueError(f"{where}: dram takes no @LOCATION")
        if t.name == "disk" and not t.location:
            raise ValueError(f"{where}: disk needs a directory, e.g. disk=100GiB@/mnt/nvme/agentkv")
        if t.name == "redis" and not (t.location or "").startswith(_REDIS_SCHEMES):
            raise ValueError(f"{where}: redis needs a URL, e.g. redis=20GiB@redis://127.0.0.1:6379")
        out.append(TierConfig(t.name, t.size, t.location))  # type: ignore[arg-type]
    return out


def open_store(tier: TierConfig, capacity_bytes: float, page_bytes: int) -> TierStore:
    """The store behind a disk or redis tier (DRAM is the engine's host slab)."""
    if tier.kind == "disk":
        from agentkv.storage.disk import DiskStore

        return DiskStore(tier.location, capacity_bytes, page_bytes)  # type: ignore[arg-type]
    if tier.kind == "redis":
        from agentkv.storage.redis_store import RedisStore

        return RedisStore(tier.location, page_bytes)  # type: ignore[arg-type]
    raise ValueError(f"no standalone store for tier {tier.kind!r}")
