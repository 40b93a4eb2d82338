"""Everything hpcgate keeps in Redis, shared by every API process and monitor, on any host.

Key layout (``prefix`` defaults to ``hpcgate:``):

- ``{prefix}snapshot:{machine}``: the machine's latest snapshot as JSON (a few KB: the
  probe's outcome, node counts and the jobs' tally), replaced whole (readers see the old
  or the new one, never a mix), with
- ``{prefix}stamp:{machine}``: that snapshot's ``taken`` time, set in the same
  transaction. Readers fetch a snapshot only when its stamp changed, so a status read
  does not move every snapshot out of Redis.
- ``{prefix}jobs:{machine}``: a hash of the latest survey's jobs, one field per owner's
  uid (that user's jobs as JSON) and ``taken`` (the survey's time), with
- ``{prefix}listed:{machine}``: that survey's time, both replaced in the same
  transaction as a survey's snapshot and left as they are by a failed probe's. A user's
  queue view reads the small ``listed`` stamp and its own field of the hash only when
  that changed: no gateway ever moves or parses a whole cluster's jobs (20 MB at 100,000
  jobs).
- ``{prefix}wrote:{machine}:{user}``: epoch seconds of the user's last submit or kill on
  that machine, expiring after the queue-freshness bound.
- ``{prefix}session:{sha256 of the token}``: a login, expiring with it.
- ``{prefix}idem:{user}:{machine}:{key}``: an idempotent submit's record (see
  :mod:`hpcgate.services.submits`), claimed with ``SET NX``, expiring after ``idempotency_ttl``.
- ``{prefix}idem-since``: when this Redis began keeping those records (no expiry). When it
  is missing (an emptied Redis), it is set anew: keys claimed within ``idempotency_ttl``
  after that are first looked up in the scheduler, whose jobs carry their key's tag.

A process reads the two stamps at most once per ``check_interval`` (``store.check_interval``,
0.05 s by default), trusting the last value in between (and what it wrote itself): a
status read then costs no round trip to Redis at all.

Every command has a short timeout, and every failure becomes :class:`StoreUnavailable`
(503): a dead Redis never hangs a request.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as redis
from redis.exceptions import RedisError, WatchError

from hpcgate.stores.base import (
    IdempotencyRecord,
    IdempotencyStore,
    Session,
    SessionStore,
    StatusStore,
    Stores,
    StoreUnavailable,
    digest,
    new_session,
)
from hpcgate.stores.output_paths import RedisOutputPaths
from hpcgate.stores.snapshot import OwnJobs, Snapshot, Survey, decode_jobs

OWN_JOBS_KEPT = 4096
"""Users' job lists a gateway process keeps decoded (per machine and user)."""


class RedisStore(StatusStore):
    """Snapshots in Redis; also the connection the other Redis-backed stores share."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "hpcgate:",
        timeout: float = 2.0,
        check_interval: float = 0.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.check_interval = check_interval
        """Seconds a stamp read from Redis is trusted before it is read again (0: never)."""
        self._checked: dict[str, tuple[float, bytes | None]] = {}  # key -> (when, value)
        self._parsed: dict[str, tuple[bytes, Snapshot]] = {}  # machine -> (stamp, snapshot)
        self._locks: dict[str, asyncio.Lock] = {}
        # (machine, uid) -> (taken, jobs), the least recently read first
        self._own: OrderedDict[tuple[str, int], tuple[bytes, OwnJobs]] = OrderedDict()
        self._own_locks: dict[tuple[str, int], asyncio.Lock] = {}
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
            raise self._unavailable(exc) from None

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"the store (Redis at {self.address}) cannot be reached: {exc}")

    @property
    def address(self) -> str:
        """The Redis URL without its credentials: what errors and logs may show."""
        parts = urlsplit(self.url)
        host = parts.netloc.rpartition("@")[2]
        return urlunsplit((parts.scheme, host, parts.path, "", ""))

    async def put(self, snapshot: Snapshot, ttl: float) -> None:
        ms = int(ttl * 1000)
        machine = snapshot.machine
        jobs, listed = f"{self.prefix}jobs:{machine}", f"{self.prefix}listed:{machine}"
        try:
            async with self._redis.pipeline(transaction=True) as together:
                together.set(f"{self.prefix}snapshot:{machine}", snapshot.to_json(), px=ms)
                together.set(f"{self.prefix}stamp:{machine}", _stamp(snapshot), px=ms)
                if isinstance(snapshot, Survey):
                    fields = {str(uid): raw for uid, raw in snapshot.encoded_jobs().items()}
                    fields["taken"] = _stamp(snapshot)
                    together.delete(jobs)
                    together.hset(jobs, mapping=fields)  # type: ignore[arg-type]  # invariant key
                    together.set(listed, _stamp(snapshot), px=ms)
                together.pexpire(jobs, ms)
                together.pexpire(listed, ms)
                await together.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        self._seen(f"{self.prefix}stamp:{machine}", _stamp(snapshot))  # its own write: at once
        if isinstance(snapshot, Survey):
            self._seen(listed, _stamp(snapshot))

    async def get_many(self, machines: Iterable[str]) -> dict[str, Snapshot | None]:
        names = list(machines)
        if not names:
            return {}
        stamps = await self._stamps([f"{self.prefix}stamp:{name}" for name in names])
        found: dict[str, Snapshot | None] = {}
        changed: dict[str, bytes] = {}
        for name, stamp in zip(names, stamps, strict=True):
            cached = self._parsed.get(name)
            if stamp is None:
                found[name] = None
            elif cached is not None and cached[0] == stamp:
                found[name] = cached[1]  # unchanged: reuse the object (its counts, its index)
            else:
                changed[name] = stamp
        if changed:
            fresh = await asyncio.gather(*(self._refresh(n, s) for n, s in changed.items()))
            found.update(zip(changed, fresh, strict=True))
        return found

    async def _refresh(self, machine: str, stamp: bytes) -> Snapshot | None:
        """The machine's snapshot as of ``stamp`` or later. Readers that see a new stamp at
        once share one fetch and one parse."""
        before = self._parsed.get(machine)
        async with self._locks.setdefault(machine, asyncio.Lock()):
            cached = self._parsed.get(machine)
            if cached is not None and _current(cached[0], stamp, cached is not before):
                return cached[1]
            raw = await self.command("get", f"{self.prefix}snapshot:{machine}")
            return None if raw is None else self._parse(machine, raw)

    def _parse(self, machine: str, raw: bytes) -> Snapshot:
        snapshot = Snapshot.from_json(raw)
        # keyed by the stamp of what was read, which may be newer than the stamp just seen
        self._parsed[machine] = (_stamp(snapshot), snapshot)
        self._seen(f"{self.prefix}stamp:{machine}", _stamp(snapshot))
        return snapshot

    def _seen(self, key: str, stamp: bytes) -> None:
        """Trust ``stamp`` as the value of ``key`` from now on (read with its data, or
        written here): the next reads need not ask again, nor fetch the data anew."""
        if self.check_interval > 0:
            self._checked[key] = (time.monotonic(), stamp)

    async def _stamps(self, keys: list[str]) -> list[bytes | None]:
        """The values of small stamp keys, each read from Redis at most once per
        ``check_interval``: in between, this process trusts the last value it read, so it
        sees a new snapshot up to that much later and spares Redis a round trip a read."""
        now = time.monotonic()
        trusted = now - self.check_interval
        values: dict[str, bytes | None] = {}
        for key in keys:
            checked = self._checked.get(key)
            if checked is not None and checked[0] > trusted:
                values[key] = checked[1]
        unknown = [key for key in keys if key not in values]
        if unknown:
            read = await self.command("mget", unknown)
            values.update(zip(unknown, read, strict=True))
            if self.check_interval > 0:
                self._checked.update((key, (now, values[key])) for key in unknown)
        return [values[key] for key in keys]

    async def jobs_of(self, machine: str, uid: int) -> OwnJobs | None:
        (taken,) = await self._stamps([f"{self.prefix}listed:{machine}"])
        if taken is None:
            return None
        key = (machine, uid)
        cached = self._own.get(key)
        if cached is not None and cached[0] == taken:
            self._own.move_to_end(key)
            return cached[1]  # unchanged: the same object (its answer is encoded once)
        return await self._refresh_own(key, taken, cached)

    async def _refresh_own(
        self, key: tuple[str, int], taken: bytes, before: tuple[bytes, OwnJobs] | None
    ) -> OwnJobs | None:
        """A user's jobs as of ``taken`` or later. That user's readers that see a new
        survey at once share one fetch and one parse."""
        machine, uid = key
        if len(self._own_locks) > 2 * OWN_JOBS_KEPT:  # only locks in use are worth keeping
            self._own_locks = {k: lock for k, lock in self._own_locks.items() if lock.locked()}
        async with self._own_locks.setdefault(key, asyncio.Lock()):
            cached = self._own.get(key)
            if cached is not None and _current(cached[0], taken, cached is not before):
                return cached[1]
            fresh, raw = await self.command(
                "hmget", f"{self.prefix}jobs:{machine}", ["taken", str(uid)]
            )
            if fresh is None:
                return None  # expired meanwhile
            own = OwnJobs(float(fresh), decode_jobs(raw) if raw is not None else ())
            self._own[key] = (fresh, own)
            self._seen(f"{self.prefix}listed:{machine}", fresh)
            self._own.move_to_end(key)
            if len(self._own) > OWN_JOBS_KEPT:
                self._own.popitem(last=False)  # the least recently read
            return own

    async def note_write(self, machine: str, user: str, when: float, ttl: float) -> None:
        key = f"{self.prefix}wrote:{machine}:{user}"
        await self.command("set", key, repr(when), px=int(ttl * 1000))

    async def last_write(self, machine: str, user: str) -> float | None:
        raw = await self.command("get", f"{self.prefix}wrote:{machine}:{user}")
        return float(raw) if raw is not None else None

    async def close(self) -> None:
        await self._redis.aclose()


def _stamp(snapshot: Snapshot) -> bytes:
    return repr(snapshot.taken).encode()


def _current(cached: bytes, seen: bytes, fetched_meanwhile: bool) -> bool:
    """Whether what is cached under stamp ``cached`` answers a reader that saw ``seen``:
    the same, or fetched by another reader while this one waited and no older than it
    (a monitor whose clock stepped back writes a smaller stamp: that one is fetched)."""
    return cached == seen or (fetched_meanwhile and float(cached) >= float(seen))


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

    async def claim(
        self, key: str, record: IdempotencyRecord, ttl: float
    ) -> IdempotencyRecord | None:
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

    async def get(self, key: str) -> IdempotencyRecord | None:
        raw = await self._store.command("get", self._key(key))
        return IdempotencyRecord.from_json(raw) if raw is not None else None

    async def put(self, key: str, record: IdempotencyRecord, ttl: float) -> None:
        await self._store.command("set", self._key(key), record.to_json(), px=int(ttl * 1000))

    async def delete(self, key: str) -> None:
        await self._store.command("delete", self._key(key))

    async def swap(
        self, key: str, expected: IdempotencyRecord, record: IdempotencyRecord, ttl: float
    ) -> bool:
        name = self._key(key)
        try:
            async with self._store._redis.pipeline(transaction=True) as pipe:
                await pipe.watch(name)
                raw = await pipe.get(name)
                if raw is None or IdempotencyRecord.from_json(raw) != expected:
                    return False
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.set(name, record.to_json(), px=int(ttl * 1000))
                await pipe.execute()
                return True
        except WatchError:
            return False  # changed by another process meanwhile
        except (RedisError, OSError) as exc:
            raise self._store._unavailable(exc) from None

    async def kept_since(self) -> float:
        name = f"{self._store.prefix}idem-since"
        await self._store.command("set", name, repr(time.time()), nx=True)
        raw = await self._store.command("get", name)
        return float(raw) if raw is not None else time.time()


def redis_stores(url: str, *, prefix: str, timeout: float, check_interval: float = 0.0) -> Stores:
    """The shared family: every store on one Redis connection."""
    status = RedisStore(url, prefix=prefix, timeout=timeout, check_interval=check_interval)
    return Stores(
        status,
        RedisSessionStore(status),
        RedisIdempotencyStore(status),
        RedisOutputPaths(url, prefix=prefix, timeout=timeout),
    )
