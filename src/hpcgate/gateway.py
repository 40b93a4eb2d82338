"""The gateway's parts wired together: login, the status store and the machines."""

from __future__ import annotations

import logging
import os
import pwd

from hpcgate.accounts import UnixAccount
from hpcgate.auth import LoginService, MemorySessionStore, SessionStore, build_authenticator
from hpcgate.config import Config
from hpcgate.errors import NotFound
from hpcgate.idempotency import (
    IdempotencyStore,
    IdempotentSubmits,
    MemoryIdempotencyStore,
)
from hpcgate.machine import Machine, build_machines
from hpcgate.runners.ssh import SshRunner
from hpcgate.status import StatusStore, build_store
from hpcgate.status.monitor import Monitor
from hpcgate.status.service import StatusService

log = logging.getLogger(__name__)


class Gateway:
    """Everything a request needs, built once from the configuration."""

    def __init__(
        self,
        config: Config,
        login: LoginService,
        machines: dict[str, Machine],
        store: StatusStore,
    ) -> None:
        self.config = config
        self.login = login
        self.machines = machines
        self.store = store
        self.status = StatusService(store, list(machines), config.status)
        self.submits = IdempotentSubmits(
            build_idempotency_store(store),
            ttl=config.store.idempotency_ttl,
            wait=2 * config.limits.scheduler_timeout + 10,
        )

    @classmethod
    def from_config(cls, config: Config) -> Gateway:
        store = build_store(config.store)
        login = LoginService(
            build_authenticator(config.auth), build_session_store(store), config.auth
        )
        return cls(config, login, build_machines(config, store), store)

    def machine(self, name: str) -> Machine:
        """The machine called ``name``; NotFound names the ones that exist."""
        try:
            return self.machines[name]
        except KeyError:
            known = ", ".join(sorted(self.machines)) or "none configured"
            raise NotFound(f"unknown machine {name[:64]!r}; machines: {known}") from None

    def monitor(self, names: list[str] | None = None) -> Monitor:
        """A monitor of ``names`` (default: every machine), writing to this gateway's store."""
        chosen = {name: self.machine(name) for name in names or self.machines}
        account = UnixAccount.lookup(self.config.monitor.account or default_monitor_account())
        over_ssh = [name for name in chosen if isinstance(chosen[name].runner, SshRunner)]
        if over_ssh and account.shell.endswith(("nologin", "false")):
            log.warning(
                "monitor account %s has no login shell (%s), so it cannot log in to %s over "
                "SSH: set monitor.account to an account that can",
                account.name,
                account.shell,
                ", ".join(over_ssh),
            )
        return Monitor(chosen, self.store, account, self.config.monitor, self.config.status)


def default_monitor_account() -> str:
    """``nobody`` when the service is root; otherwise the service's own user."""
    if os.geteuid() == 0:
        return "nobody"
    return pwd.getpwuid(os.geteuid()).pw_name


def build_idempotency_store(store: StatusStore) -> IdempotencyStore:
    """Idempotency records beside the status store: shared through Redis when it is Redis."""
    from hpcgate.status.redis_store import RedisIdempotencyStore, RedisStore

    if isinstance(store, RedisStore):
        return RedisIdempotencyStore(store)
    return MemoryIdempotencyStore()


def build_session_store(store: StatusStore) -> SessionStore:
    """Sessions beside the status store: shared by every process when it is Redis."""
    from hpcgate.status.redis_store import RedisSessionStore, RedisStore

    if isinstance(store, RedisStore):
        return RedisSessionStore(store)
    return MemorySessionStore()
