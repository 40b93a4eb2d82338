"""Cluster status: monitors write snapshots to a store; the API reads only the store."""

from hpcgate.config import StoreConfig
from hpcgate.status.store import MemoryStore, StatusStore, StoreUnavailable


def build_store(config: StoreConfig) -> StatusStore:
    """The store named by ``store.backend``."""
    if config.backend == "redis":
        from hpcgate.status.redis_store import RedisStore

        return RedisStore(config.redis_url, prefix=config.prefix, timeout=config.timeout)
    return MemoryStore()


__all__ = ["MemoryStore", "StatusStore", "StoreUnavailable", "build_store"]
