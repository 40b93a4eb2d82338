"""The Redis store: shared by every API process and monitor, on any host.

Key layout (``prefix`` defaults to ``hpcgate:``):

- ``{prefix}snapshot:{machine}``: the machine's latest snapshot as JSON, replaced whole by
  one ``SET ... PX ttl`` (atomic: readers see the old or the new one, never a mix).
- ``{prefix}wrote:{machine}:{user}``: epoch seconds of the user's last submit or kill on
  that machine, expiring after the queue-freshness bound.
- ``{prefix}idem:{user}:{machine}:{key}``: an idempotent submit's record (see
  :mod:`hpcgate.idempotency`), expiring after ``idempotency_ttl``.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis.asyncio as redis
from redis.exceptions import RedisError

from hpcgate.idempotency import IdempotencyStore, Record
from hpcgate.status.snapshot import Snapshot
from hpcgate.status.store import StatusStore, StoreUnavailable


class RedisStore(StatusStore):
    """Snapshots in Redis; every command has a short timeout so a dead Redis never hangs."""

    def __init__(self, url: str, *, prefix: str = "hpcgate:", timeout: float = 2.0) -> None:
        self.url = url
        self.prefix = prefix
        self._parse_cache: dict[str, tuple[bytes | str, Snapshot]] = {}
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
            retry_on_timeout=False,
        )

    def _snapshot_key(self, machine: str) -> str:
        return f"{self.prefix}snapshot:{machine}"

    def _write_key(self, machine: str, user: str) -> str:
        return f"{self.prefix}wrote:{machine}:{user}"

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"the status store (Redis at {self.url}) cannot be reached: {exc}")

    async def put(self, snapshot: Snapshot, ttl: float) -> None:
        try:
            await self._redis.set(
                self._snapshot_key(snapshot.machine), snapshot.to_json(), px=int(ttl * 1000)
            )
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def get_many(self, machines: Iterable[str]) -> dict[str, Snapshot | None]:
        names = list(machines)
        if not names:
            return {}
        try:
            raws = await self._redis.mget([self._snapshot_key(name) for name in names])
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return {name: self._parsed(name, raw) for name, raw in zip(names, raws, strict=True)}

    def _parsed(self, machine: str, raw: bytes | str | None) -> Snapshot | None:
        """Parse a snapshot once: while its bytes are unchanged, reuse the object (and so
        its counts and per-user index)."""
        if raw is None:
            return None
        cached = self._parse_cache.get(machine)
        if cached is not None and cached[0] == raw:
            return cached[1]
        snapshot = Snapshot.from_json(raw)
        self._parse_cache[machine] = (raw, snapshot)
        return snapshot

    async def note_write(self, machine: str, user: str, when: float, ttl: float) -> None:
        try:
            await self._redis.set(self._write_key(machine, user), repr(when), px=int(ttl * 1000))
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def last_write(self, machine: str, user: str) -> float | None:
        try:
            raw = await self._redis.get(self._write_key(machine, user))
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return float(raw) if raw is not None else None

    async def close(self) -> None:
        await self._redis.aclose()


class RedisIdempotencyStore(IdempotencyStore):
    """Idempotency records in Redis: ``{prefix}idem:{user}:{machine}:{key}``, claimed with
    ``SET NX``, so retries racing on different gateway processes submit once."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    def _key(self, key: str) -> str:
        return f"{self._store.prefix}idem:{key}"

    async def claim(self, key: str, record: Record, ttl: float) -> Record | None:
        try:
            claimed = await self._store._redis.set(
                self._key(key), record.to_json(), nx=True, px=int(ttl * 1000)
            )
            if claimed:
                return None
            raw = await self._store._redis.get(self._key(key))
        except (RedisError, OSError) as exc:
            raise self._store._unavailable(exc) from None
        return Record.from_json(raw) if raw is not None else Record("", "pending")

    async def get(self, key: str) -> Record | None:
        try:
            raw = await self._store._redis.get(self._key(key))
        except (RedisError, OSError) as exc:
            raise self._store._unavailable(exc) from None
        return Record.from_json(raw) if raw is not None else None

    async def put(self, key: str, record: Record, ttl: float) -> None:
        try:
            await self._store._redis.set(self._key(key), record.to_json(), px=int(ttl * 1000))
        except (RedisError, OSError) as exc:
            raise self._store._unavailable(exc) from None

    async def delete(self, key: str) -> None:
        try:
            await self._store._redis.delete(self._key(key))
        except (RedisError, OSError) as exc:
            raise self._store._unavailable(exc) from None
