"""Webhooks: subscriptions to a user's job events, and their signed, retried deliveries.

Each delivery is a POST of the CloudEvent (``application/cloudevents+json``) with

- ``Hpcgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``,
- ``Hpcgate-Event-Id`` (the event id: receivers de-duplicate by it) and
  ``Hpcgate-Delivery-Attempt`` (1, 2, ...).

A receiver recomputes the HMAC with the subscription's secret (shown once, at creation)
and rejects a timestamp older than a few minutes (a replay). Deliveries are queued in the
store when an event is appended (once per event and subscription) and claimed with a lease
by whichever gateway process is free; failures are retried with exponential backoff, and a
subscription whose attempts keep failing is disabled, saying why. Destinations are checked
against the allow-list before every attempt (private, loopback and link-local addresses are
refused unless allowed); redirects are never followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import httpx

import hpcgate
from hpcgate import metrics
from hpcgate.accounts import UnixAccount
from hpcgate.config import ConfigError, WebhooksConfig
from hpcgate.contract import JOBID
from hpcgate.errors import BadRequest, Conflict, NotFound
from hpcgate.stores.base import StoreUnavailable
from hpcgate.stores.events import TYPE_PREFIX, Delivery, JobEvent, Subscription, WebhookStore

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Hpcgate-Signature"
MAX_URL = 2048
_KIND = re.compile(r"[a-z][a-z_]{0,31}\Z")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Hpcgate-Signature`` header value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def allowed_networks(config: WebhooksConfig) -> list[Network]:
    """The allow-list of the config; ConfigError for a wrong entry."""
    try:
        return [ipaddress.ip_network(entry, strict=False) for entry in config.allow]
    except ValueError as exc:
        raise ConfigError(f"webhooks.allow: {exc}") from None


def _why_refused(address: IPAddress) -> str:
    """What makes ``address`` an internal destination ('' for a public one)."""
    for word, flag in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("unspecified", address.is_unspecified),
    ):
        if flag:
            return word
    return "" if address.is_global else "non-public"


class Webhooks:
    """Subscriptions of users, and the delivery of their events."""

    def __init__(self, store: WebhookStore, config: WebhooksConfig, machines: list[str]) -> None:
        self.store = store
        self.config = config
        self.machines = machines
        self.allow = allowed_networks(config)
        self.outcomes: dict[str, int] = {}
        self._wakeup = asyncio.Event()
        self._http: httpx.AsyncClient | None = None

    # -- destinations -------------------------------------------------------------------

    async def check_destination(self, url: str) -> str:
        """``url`` if events may be POSTed there; BadRequest saying why not."""
        if not isinstance(url, str) or not url.strip():
            raise BadRequest("url must be the receiver's http(s) URL")
        if len(url) > MAX_URL or re.search(r"[\x00-\x20\x7f]", url):
            raise BadRequest(
                f"url is malformed: no spaces or control characters, at most {MAX_URL}"
            )
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError as exc:
            raise BadRequest(f"url is malformed: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise BadRequest(f"url must be http or https, not {parts.scheme or 'nothing'!r}")
        if not parts.hostname:
            raise BadRequest("url is malformed: it names no host")
        if parts.username is not None or parts.password is not None:
            raise BadRequest("url must not hold a user name or password")
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                parts.hostname, port, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError) as exc:
            raise BadRequest(f"url's host {parts.hostname} cannot be resolved: {exc}") from None
        for info in infos:
            address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
            why = _why_refused(address)
            if why and not any(address in network for network in self.allow):
                raise BadRequest(
                    f"url's host {parts.hostname} resolves to {address}, a {why} address, "
                    "which the gateway's webhooks.allow list does not allow"
                )
        return url

    # -- subscriptions ------------------------------------------------------------------

    async def create(
        self,
        account: UnixAccount,
        url: Any,
        *,
        types: Any = None,
        machine: Any = None,
        jobid: Any = None,
        expires_in: Any = None,
        key: str | None = None,
    ) -> dict[str, Any]:
        """A new subscription; its public form with the ``secret`` (shown only here).

        With ``key``, the subscription replaces the one this user made with the same key
        (a retried submit's ``notify_url`` leaves one subscription, with the last secret).
        """
        url = await self.check_destination(url)
        kinds = _kinds(types)
        if machine is not None and machine != "":
            if machine not in self.machines:
                known = ", ".join(sorted(self.machines))
                raise BadRequest(f"unknown machine {str(machine)[:64]!r}; machines: {known}")
        else:
            machine = None
        if jobid is not None and jobid != "":
            if not isinstance(jobid, str | int) or not JOBID.match(str(jobid)):
                raise BadRequest(f"{str(jobid)[:40]!r} is not a job id; it looks like 4816214")
            jobid = str(jobid)
        else:
            jobid = None
        lifetime = _lifetime(expires_in, self.config.lifetime)
        subscription_id = "sub_" + (
            secrets.token_hex(12)
            if key is None
            else hashlib.sha256(f"{account.uid}|{key}".encode()).hexdigest()[:24]
        )
        existing = [
            found
            for found in await self.store.subscriptions(account.uid)
            if found.id != subscription_id
        ]
        if len(existing) >= self.config.max_per_user:
            raise Conflict(
                f"you have {len(existing)} subscriptions, the most allowed; delete one first"
            )
        now = time.time()
        subscription = Subscription(
            id=subscription_id,
            uid=account.uid,
            user=account.name,
            url=url,
            secret="whsec_" + secrets.token_urlsafe(32),
            types=kinds,
            machine=machine,
            jobid=jobid,
            created=now,
            expires=now + lifetime,
        )
        await self.store.put_subscription(subscription)
        return subscription.public(now) | {"secret": subscription.secret}

    async def owned(self, account: UnixAccount, subscription_id: str) -> Subscription:
        """The caller's subscription; NotFound for another user's, as for none."""
        found = await self.store.subscription(subscription_id[:64])
        if found is None or found.uid != account.uid:
            raise NotFound(f"you have no subscription {subscription_id[:64]!r}")
        return found

    async def listed(self, account: UnixAccount) -> list[dict[str, Any]]:
        now = time.time()
        return [found.public(now) for found in await self.store.subscriptions(account.uid)]

    async def get(self, account: UnixAccount, subscription_id: str) -> dict[str, Any]:
        return (await self.owned(account, subscription_id)).public(time.time())

    async def delete(self, account: UnixAccount, subscription_id: str) -> None:
        await self.store.delete_subscription(await self.owned(account, subscription_id))

    async def deliveries(self, account: UnixAccount, subscription_id: str) -> list[dict[str, Any]]:
        await self.owned(account, subscription_id)
        return await self.store.delivery_log(subscription_id)

    # -- queueing and delivering --------------------------------------------------------

    async def publish(self, events: list[JobEvent]) -> None:
        """Queue one delivery per event and matching subscription (where the event is
        appended, so once across all processes)."""
        now = time.time()
        deliveries = []
        for uid in {event.uid for event in events}:
            subscriptions = [
                found
                for found in await self.store.subscriptions(uid)
                if found.status == "active" and found.expires > now
            ]
            for event in events:
                for subscription in subscriptions:
                    if event.uid == uid and subscription.matches(event):
                        deliveries.append(Delivery(subscription.id, event))
        if deliveries:
            await self.store.enqueue(deliveries, now)
            self._wakeup.set()

    async def run(self, poll: float = 0.25) -> None:
        """Deliver due deliveries until cancelled (each serve process runs this)."""
        running: set[asyncio.Task[None]] = set()
        self._http = httpx.AsyncClient(
            follow_redirects=False,
            timeout=self.config.timeout,
            headers={"User-Agent": f"hpcgate-webhooks/{hpcgate.__version__}"},
        )
        try:
            while True:
                free = self.config.concurrency - len(running)
                claimed: list[Delivery] = []
                if free > 0:
                    try:
                        claimed = await self.store.claim_due(
                            time.time(), self.config.timeout + 30, free
                        )
                    except StoreUnavailable as exc:
                        log.warning("cannot claim webhook deliveries: %s", exc.message)
                for delivery in claimed:
                    task = asyncio.create_task(self._attempt(delivery))
                    running.add(task)
                    task.add_done_callback(running.discard)
                if not claimed or free <= 0:
                    self._wakeup.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wakeup.wait(), timeout=poll)
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            await self._http.aclose()

    async def _attempt(self, delivery: Delivery) -> None:
        try:
            await self._deliver(delivery)
        except StoreUnavailable as exc:  # the lease runs out and it is tried again
            log.warning("webhook delivery %s: the store failed: %s", delivery.key, exc.message)
        except Exception:
            log.exception("webhook delivery %s failed unexpectedly", delivery.key)

    async def _deliver(self, delivery: Delivery) -> None:
        subscription = await self.store.subscription(delivery.subscription)
        if subscription is None:
            await self.store.finish(delivery)
            return
        event = delivery.event
        attempt = delivery.attempt + 1
        entry: dict[str, Any] = {
            "event_id": event.id,
            "type": event.type,
            "subject": f"{event.machine}/{event.jobid}",
            "attempt": attempt,
            "time": time.time(),
        }
        now = time.time()
        if subscription.status != "active" or subscription.expires <= now:
            why = subscription.disabled_reason if subscription.status != "active" else "expired"
            await self._done(subscription, delivery, entry | {"outcome": "skipped", "error": why})
            return
        status, error = await self._post(subscription, event, attempt)
        entry |= {"status": status, "error": error, "seconds": round(time.time() - now, 3)}
        if status is not None and 200 <= status < 300:
            if subscription.failures:
                await self.store.put_subscription(await self._fresh(subscription, failures=0))
            await self._done(subscription, delivery, entry | {"outcome": "delivered"})
            return
        failures = subscription.failures + 1
        changes: dict[str, Any] = {"failures": failures}
        if failures >= self.config.disable_after:
            changes |= {
                "status": "disabled",
                "disabled_reason": f"{failures} delivery attempts in a row failed; "
                f"the last: {error or f'HTTP {status}'}",
            }
        await self.store.put_subscription(await self._fresh(subscription, **changes))
        if attempt >= self.config.max_attempts or "status" in changes:
            outcome = "failed" if attempt >= self.config.max_attempts else "abandoned"
            await self._done(subscription, delivery, entry | {"outcome": outcome})
            return
        pause = min(self.config.retry_max, self.config.retry_base * 2 ** (attempt - 1))
        entry |= {"outcome": "retrying", "next_attempt": now + pause}
        await self.store.reschedule(
            Delivery(delivery.subscription, event, attempt), time.time() + pause
        )
        await self._logged(subscription, entry)

    async def _fresh(self, subscription: Subscription, **changes: Any) -> Subscription:
        """The stored subscription (another process may have changed it) with ``changes``."""
        from dataclasses import replace

        current = await self.store.subscription(subscription.id) or subscription
        return replace(current, **changes)

    async def _done(
        self, subscription: Subscription, delivery: Delivery, entry: dict[str, Any]
    ) -> None:
        await self._logged(subscription, entry)
        await self.store.finish(delivery)

    async def _logged(self, subscription: Subscription, entry: dict[str, Any]) -> None:
        outcome = str(entry.get("outcome"))
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
        await self.store.log(subscription.id, entry, self.config.log_size)

    async def _post(
        self, subscription: Subscription, event: JobEvent, attempt: int
    ) -> tuple[int | None, str]:
        """POST the event; the HTTP status (None when there was none) and an error."""
        try:
            await self.check_destination(subscription.url)
        except BadRequest as exc:
            return None, exc.message
        body = json.dumps(event.cloud(), separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/cloudevents+json",
            SIGNATURE_HEADER: sign(subscription.secret, int(time.time()), body),
            "Hpcgate-Event-Id": event.id,
            "Hpcgate-Delivery-Attempt": str(attempt),
        }
        assert self._http is not None
        try:
            response = await self._http.post(subscription.url, content=body, headers=headers)
        except httpx.TimeoutException:
            return None, f"no answer within {self.config.timeout:g} s"
        except httpx.HTTPError as exc:
            return None, f"could not connect: {exc}" if str(exc) else type(exc).__name__
        if 300 <= response.status_code < 400:
            return response.status_code, "redirects are not followed"
        if response.status_code >= 300:
            return response.status_code, f"HTTP {response.status_code}"
        return response.status_code, ""


def _kinds(types: Any) -> tuple[str, ...]:
    if types is None or types == "":
        return ()
    if isinstance(types, str):
        types = types.split(",")
    if not isinstance(types, list) or not all(isinstance(kind, str) for kind in types):
        raise BadRequest('types must be a list of event types, e.g. ["org.hpcgate.job.completed"]')
    kinds = []
    for kind in types:
        short = kind.strip().removeprefix(TYPE_PREFIX)
        if not _KIND.match(short):
            raise BadRequest(
                f"{kind[:64]!r} is not an event type; types look like {TYPE_PREFIX}completed"
            )
        kinds.append(short)
    return tuple(dict.fromkeys(kinds))


def _lifetime(expires_in: Any, default: float) -> float:
    if expires_in is None or expires_in == "":
        return default
    try:
        seconds = float(expires_in)
    except (TypeError, ValueError):
        raise BadRequest(f"expires_in must be a number of seconds, not {expires_in!r}") from None
    if not 60 <= seconds <= 366 * 86400:
        raise BadRequest("expires_in must be between 60 seconds and 366 days")
    return seconds
