"""Where KV pages live below the GPU: host DRAM, local disk, Redis, each behind `TierStore`."""

from agentkv.storage.base import BlockKey, TierStore
from agentkv.storage.keys import block_key, chain_keys, namespace_digest

__all__ = ["BlockKey", "TierStore", "block_key", "chain_keys", "namespace_digest"]
