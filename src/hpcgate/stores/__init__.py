"""Stores: everything hpcgate keeps between requests (snapshots, sessions, idempotency)."""

from hpcgate.stores.base import (
    IdempotencyRecord,
    IdempotencyStore,
    Session,
    SessionStore,
    StatusStore,
    Stores,
    StoreUnavailable,
)
from hpcgate.stores.snapshot import Snapshot

__all__ = [
    "IdempotencyRecord",
    "IdempotencyStore",
    "Session",
    "SessionStore",
    "Snapshot",
    "StatusStore",
    "StoreUnavailable",
    "Stores",
]
