"""Where KV pages live below the GPU: host DRAM, local disk, Redis, each behind `TierStore`."""

from agentkv.kvcache.block_hash import block_key, chain_keys, namespace_digest
from agentkv.storage.base import BlockKey, TierStore

__all__ = ["BlockKey", "TierStore", "block_key", "chain_keys", "namespace_digest"]
