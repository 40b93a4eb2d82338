"""The one room where parts are built: every concrete class is chosen here, from the config.

Schedulers, runners and authenticators are plug-ins found by entry point
(:mod:`hpcgate.plugins`); stores are the memory or Redis family. Tests and embedding code
pass ready-made parts through the same functions instead of changing a built gateway.
Every problem found while building is a :class:`~hpcgate.config.ConfigError` of one line
that names the setting, so ``hpcgate serve`` refuses a wrong configuration at start.
"""

from __future__ import annotations

import logging
import os
import pwd
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from hpcgate import plugins
from hpcgate.accounts import UnixAccount
from hpcgate.auth.base import Authenticator
from hpcgate.auth.login import LoginService
from hpcgate.config import Config, ConfigError, LimitsConfig, MachineConfig
from hpcgate.errors import GatewayError
from hpcgate.gateway import Gateway
from hpcgate.monitor import Monitor
from hpcgate.process import Limits
from hpcgate.runners.base import Runner
from hpcgate.schedulers.base import Scheduler
from hpcgate.services.events import EventService
from hpcgate.services.files import FileLimits, FileService
from hpcgate.services.hooks import JobEventSink, JobNotifications
from hpcgate.services.machine import Machine
from hpcgate.services.output import JobOutput
from hpcgate.services.queue_cache import QueueCache
from hpcgate.services.status import StatusService
from hpcgate.services.submits import IdempotentSubmits
from hpcgate.services.webhooks import Webhooks
from hpcgate.stores.base import Stores
from hpcgate.stores.events import EventStore
from hpcgate.stores.memory import memory_stores
from hpcgate.stores.output_paths import SqliteOutputPaths
from hpcgate.stores.sqlite_events import SqliteEventStore

log = logging.getLogger(__name__)
T = TypeVar("T")


def build_gateway(
    config: Config,
    *,
    stores: Stores | None = None,
    authenticator: Authenticator | None = None,
    runners: Mapping[str, Runner] | None = None,
    schedulers: Mapping[str, Scheduler] | None = None,
) -> Gateway:
    """A gateway from ``config``; any part given here is used instead of being built.

    ``runners`` and ``schedulers`` are keyed by machine name.
    """
    stores = stores or build_stores(config)
    login = LoginService(authenticator or build_authenticator(config), stores.sessions, config.auth)
    context = plugins.BuildContext()
    submits = IdempotentSubmits(
        stores.idempotency,
        ttl=config.store.idempotency_ttl,
        wait=submit_attempt_limit(config),
    )
    events = build_events(config, list(config.machines))
    machines = {
        name: build_machine(
            name,
            section,
            config,
            stores,
            submits,
            context,
            runner=(runners or {}).get(name),
            scheduler=(schedulers or {}).get(name),
            events=events,
            notifications=events.webhooks,
        )
        for name, section in config.machines.items()
    }
    status = StatusService(stores.status, list(machines), config.status)
    files = {name: build_files(name, config, machine) for name, machine in machines.items()}
    output = {
        name: JobOutput(machine, files[name], stores.output_paths)
        for name, machine in machines.items()
    }
    for name, machine in machines.items():
        machine.submit_listeners.append(output[name].submitted)
    return Gateway(
        config, login, machines, stores, status, events=events, files=files, output=output
    )


def _bounded(limits: LimitsConfig, timeout: float, output_bytes: int) -> Limits:
    """An action's limits: its own time and output, and the machine's process and memory
    bounds, the same for every action (with local-helper, one helper per user serves all)."""
    return Limits(timeout, output_bytes, limits.max_processes, limits.max_memory_bytes)


def build_files(name: str, config: Config, machine: Machine) -> FileService:
    """The file service of machine ``name``, with its section's limits."""
    limits = config.machines[name].effective_limits(config.limits)
    return FileService(
        name,
        machine.runner,
        FileLimits(
            command=_bounded(limits, limits.timeout, limits.output_bytes),
            transfer=_bounded(limits, limits.transfer_timeout, limits.scheduler_output_bytes),
            max_upload_bytes=limits.max_upload_bytes,
            page_size=limits.listing_page_size,
        ),
    )


def build_events(config: Config, machines: list[str]) -> EventService:
    """Job events and webhooks, kept beside the store's other records: in Redis with the
    Redis store, else in the embedded store's SQLite file."""
    store: EventStore
    if config.store.backend == "redis":
        from hpcgate.stores.redis_events import RedisEventStore  # redis only when used

        store = RedisEventStore(
            config.store.redis_url,
            prefix=config.store.prefix,
            timeout=config.store.timeout,
            retention=config.events.retention,
            max_per_user=config.events.max_per_user,
        )
    else:
        from hpcgate.stores.sqlite import default_path

        store = SqliteEventStore(
            config.store.path or default_path(),
            retention=config.events.retention,
            max_per_user=config.events.max_per_user,
        )
    events = EventService(store, config.events)
    events.attach(Webhooks(store, config.webhooks, machines))
    return events


def build_stores(config: Config) -> Stores:
    """The store family named by ``store.backend``; the embedded one keeps idempotency
    records in the SQLite file ``store.path``, so they outlive the process."""
    if config.store.backend == "redis":
        from hpcgate.stores.redis import redis_stores

        return redis_stores(
            config.store.redis_url,
            prefix=config.store.prefix,
            timeout=config.store.timeout,
            check_interval=config.store.check_interval,
        )
    from hpcgate.stores.sqlite import SqliteIdempotencyStore, default_path

    embedded = memory_stores()
    path = config.store.path or default_path()
    return Stores(
        embedded.status,
        embedded.sessions,
        SqliteIdempotencyStore(path),
        SqliteOutputPaths(path),
    )


def build_authenticator(config: Config) -> Authenticator:
    """The authenticator plug-in named by ``auth.backend``."""
    cls = _plugin(plugins.AUTHENTICATORS, config.auth.backend, "auth.backend")
    authenticator: Authenticator = _built("auth", lambda: cls.from_config(config.auth))
    return authenticator


def build_machine(
    name: str,
    section: MachineConfig,
    config: Config,
    stores: Stores,
    submits: IdempotentSubmits,
    context: plugins.BuildContext,
    *,
    runner: Runner | None = None,
    scheduler: Scheduler | None = None,
    events: JobEventSink | None = None,
    notifications: JobNotifications | None = None,
) -> Machine:
    """Machine ``name`` with the runner and scheduler plug-ins its section names."""
    if runner is None:
        runner_class = _plugin(plugins.RUNNERS, section.runner, f"machines.{name}.runner")
        runner = _built(
            f"machines.{name}", lambda: runner_class.from_config(name, section, context)
        )
    if scheduler is None:
        scheduler_class = _plugin(
            plugins.SCHEDULERS, section.scheduler, f"machines.{name}.scheduler"
        )
        scheduler = _built(f"machines.{name}", lambda: scheduler_class.from_config(name, section))
    if not runner.take_stand_ins(scheduler.stand_ins()):
        raise ConfigError(
            f"machines.{name}: the {section.runner} runner cannot answer "
            f"{', '.join(scheduler.stand_ins())} in the user's helper; "
            "use runner = 'local-helper' or drop options.submit"
        )
    limits = section.effective_limits(config.limits)
    return Machine(
        name,
        runner,
        scheduler,
        command_limits=_bounded(limits, limits.timeout, limits.output_bytes),
        scheduler_limits=_bounded(limits, limits.scheduler_timeout, limits.scheduler_output_bytes),
        queue_cache=QueueCache(stores.status, name, config.status.queue_max_age),
        submits=submits,
        probe_command=section.probe_command,
        events=events,
        notifications=notifications,
    )


def submit_attempt_limit(config: Config) -> float:
    """How long a keyed submit may run before it is cut: two scheduler calls (a tag
    lookup and sbatch) on the machine with the longest ``scheduler_timeout``, plus 10 s
    for the script's write and a connection. Whatever runs longer is cut and left in
    doubt, to be settled by the tag lookup."""
    slowest = max(
        (
            section.effective_limits(config.limits).scheduler_timeout
            for section in config.machines.values()
        ),
        default=config.limits.scheduler_timeout,
    )
    return 10 + 2 * slowest


def build_monitor(gateway: Gateway, names: list[str] | None = None) -> Monitor:
    """A monitor of ``names`` (default: every machine), writing to the gateway's store."""
    config = gateway.config
    chosen = {name: gateway.machine(name) for name in names or gateway.machines}
    account_name = config.monitor.account or default_monitor_account()
    try:
        account = UnixAccount.lookup(account_name)
    except GatewayError:
        raise ConfigError(
            f"monitor.account: there is no Unix account {account_name!r} here; "
            "set it to an account that may see every job"
        ) from None
    remote = [name for name in chosen if config.machines[name].runner != "local"]
    if remote and account.shell.endswith(("nologin", "false")):
        log.warning(
            "monitor account %s has no login shell (%s), so it cannot log in to %s: "
            "set monitor.account to an account that can",
            account.name,
            account.shell,
            ", ".join(remote),
        )
    return Monitor(
        chosen,
        gateway.stores.status,
        account,
        config.monitor,
        config.status,
        events=gateway.events,
    )


def default_monitor_account() -> str:
    """``nobody`` when the service is root; otherwise the service's own user."""
    if os.geteuid() == 0:
        return "nobody"
    return pwd.getpwuid(os.geteuid()).pw_name


def _plugin(group: str, name: str, setting: str) -> Any:
    try:
        return plugins.load(group, name)
    except plugins.PluginError as exc:
        raise ConfigError(f"{setting}: {exc}") from None


def _built(setting: str, make: Callable[[], T]) -> T:
    """``make()``, with any failure but a ConfigError reported as one for ``setting``."""
    try:
        return make()
    except ConfigError:
        raise
    except (OSError, ValueError, GatewayError) as exc:
        raise ConfigError(f"{setting}: {exc}") from None
