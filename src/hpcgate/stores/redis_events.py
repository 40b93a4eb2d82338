"""Job events, ended jobs and webhooks in Redis, shared by every gateway process and monitor.

Key layout (after the store's ``prefix``):

- ``ev:feed``: a stream of every user's events (fields ``u`` uid, ``e`` the event), the
  live feed each gateway process follows with one blocking ``XREAD``; capped.
- ``ev:user:{uid}``: a stream of one user's events, with the same ids as in the feed
  (both are written by one script, so ids are ordered per user and a client resumes
  with its last id); capped at ``max_per_user``, trimmed to the retention.
- ``ev:seen:{machine}``: a hash of the last state the monitor reported of each job;
  ``ev:since:{machine}``: how far accounting has been read.
- ``ev:done:{machine}:{jobid}``: an ended job's final record, expiring after its ttl.
- ``wh:sub:{id}``, ``wh:subs:{uid}``: subscriptions and each user's set of them;
  ``wh:due`` (sorted by due time) and ``wh:dlv`` (hash): pending deliveries, claimed by a
  script that pushes each claimed one's due time past a lease, so one process makes it;
  ``wh:log:{id}``: a subscription's delivery log, newest first, capped.
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis.asyncio as redis
from redis.exceptions import RedisError

from hpcgate.schedulers.base import JobRecord
from hpcgate.stores.base import StoreUnavailable
from hpcgate.stores.events import (
    Delivery,
    EventStore,
    JobEvent,
    MachineEvents,
    Seen,
    Subscription,
    WebhookStore,
    encode_records,
)
from hpcgate.stores.snapshot import record_from_dict

FEED_CAP = 100_000

_APPEND = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '*', 'u', ARGV[1], 'e', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[3], id, 'e', ARGV[2])
redis.call('XTRIM', KEYS[2], 'MINID', ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return id
"""

_CLAIM = """
local keys = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local claimed = {}
for _, key in ipairs(keys) do
  local delivery = redis.call('HGET', KEYS[2], key)
  if delivery then
    redis.call('ZADD', KEYS[1], ARGV[2], key)
    table.insert(claimed, delivery)
  else
    redis.call('ZREM', KEYS[1], key)
  end
end
return claimed
"""


class RedisEventStore(EventStore, WebhookStore):
    """Events in Redis Streams; webhooks and ended jobs beside them."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        timeout: float,
        retention: float,
        max_per_user: int,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.retention = retention
        self.max_per_user = max_per_user
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            health_check_interval=30,
        )
        # blocking reads wait longer than a command may take: their own connections
        self._blocking = redis.Redis.from_url(
            url, socket_timeout=timeout + 5, socket_connect_timeout=timeout
        )
        self._append = self._redis.register_script(_APPEND)
        self._claim = self._redis.register_script(_CLAIM)

    def _key(self, *parts: object) -> str:
        return self.prefix + ":".join(str(part) for part in parts)

    def _unavailable(self, exc: Exception) -> StoreUnavailable:
        return StoreUnavailable(f"the event store (Redis at {self.url}) cannot be reached: {exc}")

    async def _command(self, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return await getattr(self._redis, name)(*args, **kwargs)
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    # -- events -------------------------------------------------------------------------

    async def append(
        self,
        events: list[JobEvent],
        machine: str | None = None,
        seen: dict[str, Seen | None] | None = None,
        since: float | None = None,
    ) -> list[JobEvent]:
        oldest = int((time.time() - self.retention) * 1000)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for event in events:
                    await self._append(
                        keys=[self._key("ev", "feed"), self._key("ev", "user", event.uid)],
                        args=[
                            event.uid,
                            event.to_json(),
                            self.max_per_user,
                            oldest,
                            FEED_CAP,
                            int(self.retention) + 60,
                        ],
                        client=pipe,
                    )
                if machine is not None:
                    changed: dict[Any, Any] = {
                        k: v.to_json() for k, v in (seen or {}).items() if v is not None
                    }
                    gone = [k for k, v in (seen or {}).items() if v is None]
                    if changed:
                        pipe.hset(self._key("ev", "seen", machine), mapping=changed)
                    if gone:
                        pipe.hdel(self._key("ev", "seen", machine), *gone)
                    if since is not None:
                        pipe.set(self._key("ev", "since", machine), repr(since))
                results = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return [event.with_id(_text(found)) for event, found in zip(events, results, strict=False)]

    async def machine_events(self, machine: str) -> MachineEvents:
        raw = await self._command("hgetall", self._key("ev", "seen", machine))
        since = await self._command("get", self._key("ev", "since", machine))
        seen = {_text(jobid): Seen.from_json(value) for jobid, value in raw.items()}
        return MachineEvents(seen, None if since is None else float(since))

    async def accounting_mark(self, machine: str) -> float | None:
        since = await self._command("get", self._key("ev", "since", machine))
        return None if since is None else float(since)

    async def seen_jobs(self, machine: str, jobids: list[str]) -> dict[str, Seen]:
        if not jobids:
            return {}
        values = await self._command("hmget", self._key("ev", "seen", machine), jobids)
        return {
            jobid: Seen.from_json(value)
            for jobid, value in zip(jobids, values, strict=True)
            if value is not None
        }

    async def read(self, uid: int, after: str | None, limit: int) -> list[JobEvent]:
        start = f"({after}" if after and _stream_id(after) else "-"
        entries = await self._command(
            "xrange", self._key("ev", "user", uid), min=start, max="+", count=limit
        )
        oldest = (time.time() - self.retention) * 1000
        return [
            JobEvent.from_json(fields[b"e"], _text(entry_id))
            for entry_id, fields in entries
            if int(_text(entry_id).split("-")[0]) >= oldest
        ]

    async def feed_cursor(self) -> str:
        last = await self._command("xrevrange", self._key("ev", "feed"), count=1)
        return _text(last[0][0]) if last else "0-0"

    async def follow(self, cursor: str, timeout: float) -> tuple[str, list[JobEvent]]:
        block = max(1, int(min(timeout, self.timeout) * 1000))
        try:
            found = await self._blocking.xread(
                {self._key("ev", "feed"): cursor}, count=1000, block=block
            )
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        events = []
        streams: list[Any] = list(found or [])
        for _stream, entries in streams:
            for entry_id, fields in entries:
                events.append(JobEvent.from_json(fields[b"e"], _text(entry_id)))
        return (events[-1].id if events else cursor), events

    async def put_finished(
        self, machine: str, jobid: str, rows: list[JobRecord], ttl: float
    ) -> None:
        text = encode_records(rows)
        await self._command(
            "set", self._key("ev", "done", machine, jobid), text, px=int(ttl * 1000)
        )

    async def get_finished(self, machine: str, jobid: str) -> list[JobRecord] | None:
        raw = await self._command("get", self._key("ev", "done", machine, jobid))
        return None if raw is None else [record_from_dict(row) for row in json.loads(raw)]

    # -- webhooks -----------------------------------------------------------------------

    async def put_subscription(self, subscription: Subscription) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self._key("wh", "sub", subscription.id), subscription.to_json())
                pipe.sadd(self._key("wh", "subs", subscription.uid), subscription.id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def subscription(self, subscription_id: str) -> Subscription | None:
        raw = await self._command("get", self._key("wh", "sub", subscription_id))
        return None if raw is None else Subscription.from_json(raw)

    async def subscriptions(self, uid: int) -> list[Subscription]:
        ids = sorted(
            _text(i) for i in await self._command("smembers", self._key("wh", "subs", uid))
        )
        if not ids:
            return []
        raws = await self._command("mget", [self._key("wh", "sub", i) for i in ids])
        found = [Subscription.from_json(raw) for raw in raws if raw is not None]
        return sorted(found, key=lambda subscription: subscription.created)

    async def delete_subscription(self, subscription: Subscription) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._key("wh", "sub", subscription.id))
                pipe.delete(self._key("wh", "log", subscription.id))
                pipe.srem(self._key("wh", "subs", subscription.uid), subscription.id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def enqueue(self, deliveries: list[Delivery], due: float) -> None:
        if not deliveries:
            return
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                for delivery in deliveries:
                    pipe.hsetnx(self._key("wh", "dlv"), delivery.key, delivery.to_json())
                    pipe.zadd(self._key("wh", "due"), {delivery.key: due}, nx=True)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def claim_due(self, now: float, lease: float, limit: int) -> list[Delivery]:
        try:
            claimed = await self._claim(
                keys=[self._key("wh", "due"), self._key("wh", "dlv")],
                args=[now, now + lease, limit],
            )
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None
        return [Delivery.from_json(raw) for raw in claimed]

    async def reschedule(self, delivery: Delivery, due: float) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(self._key("wh", "dlv"), delivery.key, delivery.to_json())
                pipe.zadd(self._key("wh", "due"), {delivery.key: due})
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def finish(self, delivery: Delivery) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hdel(self._key("wh", "dlv"), delivery.key)
                pipe.zrem(self._key("wh", "due"), delivery.key)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def log(self, subscription_id: str, entry: dict[str, Any], size: int) -> None:
        key = self._key("wh", "log", subscription_id)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.lpush(key, json.dumps(entry))
                pipe.ltrim(key, 0, size - 1)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise self._unavailable(exc) from None

    async def delivery_log(self, subscription_id: str) -> list[dict[str, Any]]:
        raws = await self._command("lrange", self._key("wh", "log", subscription_id), 0, -1)
        return [json.loads(raw) for raw in raws]

    async def close(self) -> None:
        await self._redis.aclose()
        await self._blocking.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _stream_id(text: str) -> bool:
    first, _, second = text.partition("-")
    return first.isdigit() and (not second or second.isdigit())
