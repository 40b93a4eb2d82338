"""Everything hpcgate keeps in Redis, shared by every API process and monitor, on any host.

Key layout (``prefix`` defaults to ``hpcgate:``):

- ``{prefix}snapshot:{machine}``: the machine's latest snapshot as JSON, replaced whole by
  one ``SET ... PX ttl`` (atomic: readers see the old or the new one, never a mix).
- ``{prefix}wrote:{machine}:{user}``: epoch seconds of the user's last submit or kill on
  that machine, expiring after the queue-freshness bound.
- ``{prefix}session:{sha256 of the token}``: a login, expiring with it.
- ``{prefix}idem:{user}:{machine}:{key}``: an idempotent submit's record (see
  :mod:`hpcgate.idempotency`), claimed with ``SET NX``, expiring after ``idempotency_ttl``.

Every command has a short timeout, and every failure becomes :class:`StoreUnavailable`
(503): a dead Redis never hangs a request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from hpcgate.auth.sessions import Session, SessionStore, digest, new_session
from hpcgate.idempotency import IdempotencyStore, Record
from hpcgate.status.snapshot import Snapshot
from hpcgate.status.store import StatusStore, StoreUnavailable


class RedisStore(StatusStore):
    """Snapshots in Redis; also the connection the other Redis-backed stores share."""

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

    async def command(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Run one Redis command; any failure to reach Redis is StoreUnavailable."""
        try:
            return await getattr(self._redis, name)(*args, **kwargs)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(
                f"the status store (Redis at {self.url}) cannot be reached: {exc}"
            ) from None

    async def put(self, snapshot: Snapshot, ttl: float) -> None:
        key = f"{self.prefix}snapshot:{snapshot.machine}"
        await self.command("set", key, snapshot.to_json(), px=int(ttl * 1000))

    async def get_many(self, machines: Iterable[str]) -> dict[str, Snapshot | None]:
        names = list(machines)
        if not names:
            return {}
        raws = await self.command("mget", [f"{self.prefix}snapshot:{name}" for name in names])
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
        key = f"{self.prefix}wrote:{machine}:{user}"
        await self.command("set", key, repr(when), px=int(ttl * 1000))

    async def last_write(self, machine: str, user: str) -> float | None:
        raw = await self.command("get", f"{self.prefix}wrote:{machine}:{user}")
        return float(raw) if raw is not None else None

    async def close(self) -> None:
        await self._redis.aclose()


class RedisSessionStore(SessionStore):
    """Sessions shared by every gateway process: a login on one works on all of them, and a
    logout ends it everywhere."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    def _key(self, token_digest: str) -> str:
        return f"{self._store.prefix}session:{token_digest}"

    async def create(self, username: str, lifetime: float) -> tuple[str, Session]:
        token, token_digest, session = new_session(username, lifetime)
        value = json.dumps([session.username, session.created, session.expires])
        await self._store.command("set", self._key(token_digest), value, px=int(lifetime * 1000))
        return token, session

    async def get(self, token: str) -> Session | None:
        raw = await self._store.command("get", self._key(digest(token)))
        if raw is None:
            return None
        username, created, expires = json.loads(raw)
        return Session(username, created, expires) if expires > time.time() else None

    async def delete(self, token: str) -> bool:
        return bool(await self._store.command("delete", self._key(digest(token))))


class RedisIdempotencyStore(IdempotencyStore):
    """Idempotency records in Redis, claimed with ``SET NX``, so retries racing on
    different gateway processes submit once."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store

    def _key(self, key: str) -> str:
        return f"{self._store.prefix}idem:{key}"

    async def claim(self, key: str, record: Record, ttl: float) -> Record | None:
        for _ in range(3):
            if await self._store.command(
                "set", self._key(key), record.to_json(), nx=True, px=int(ttl * 1000)
            ):
                return None
            existing = await self.get(key)
            if existing is not None:
                return existing
            # the record expired between the two commands: claim again
        raise StoreUnavailable("could not claim an Idempotency-Key; try again")

    async def get(self, key: str) -> Record | None:
        raw = await self._store.command("get", self._key(key))
        return Record.from_json(raw) if raw is not None else None

    async def put(self, key: str, record: Record, ttl: float) -> None:
        await self._store.command("set", self._key(key), record.to_json(), px=int(ttl * 1000))

    async def delete(self, key: str) -> None:
        await self._store.command("delete", self._key(key))
