"""Configuration: one TOML file, with environment overrides.

Any setting can be overridden by an environment variable named ``HPCGATE_`` followed by
its path in upper case with ``__`` between levels, e.g. ``HPCGATE_SERVER__PORT=9000`` or
``HPCGATE_MACHINES__LN3__RUNNER=local``. Values are read as TOML values when they parse
(numbers, booleans, quoted strings, arrays) and as plain strings otherwise.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from hpcgate import plugins
from hpcgate.contract import MACHINE_NAME_PATTERN

ENV_PREFIX = "HPCGATE_"


class ConfigError(Exception):
    """The configuration file or an override is wrong; the message says where."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    tls_certfile: Path | None = Field(None, description="serve HTTPS with this certificate")
    tls_keyfile: Path | None = Field(None, description="and this private key")
    forwarded_allow_ips: str = Field(
        "", description="proxies trusted for X-Forwarded-For/-Proto, e.g. '127.0.0.1'"
    )
    header_timeout: float = Field(
        10.0, gt=0, description="seconds a request's head may take to arrive; then 408, closed"
    )
    body_timeout: float = Field(
        60.0, gt=0, description="seconds a request's body may take to arrive; then 408, closed"
    )
    max_connections: int = Field(
        1000, ge=1, description="open client connections; past it: 503 and closed at once"
    )
    max_header_bytes: int = Field(
        32 * 1024, ge=1024, description="request line and headers together; past it: 431"
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        description="largest request body (a form-encoded script grows ~3x); past it: 413",
    )
    max_login_body_bytes: int = Field(
        64 * 1024, ge=1024, description="largest body of POST /api/auth; past it: 413"
    )
    access_log: bool = Field(
        True, description="a log line per request (the audit log records acting calls anyway)"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as text, or one JSON object per line with the request id"
    )
    workers: int = Field(
        1, ge=1, le=256, description="gateway processes sharing the port; above 1 needs Redis"
    )


class AuthConfig(_Section):
    backend: str = Field(
        "pam", description="an hpcgate.authenticators plug-in: pam, users_file, or one installed"
    )
    pam_service: str = "hpcgate"
    users_file: Path | None = None
    session_lifetime: int = Field(12 * 3600, ge=60, description="seconds a login lasts")
    failed_login_delay: float = Field(1.0, ge=0, le=30, description="seconds a failure waits")
    min_uid: int = Field(1000, ge=1, description="lowest uid that may use the gateway")
    cookie_secure: bool = Field(False, description="send the cookie over HTTPS only")
    max_failures_per_user: int = Field(
        5, ge=1, description="failed logins of a name from one address before a lockout"
    )
    max_failures_per_address: int = Field(20, ge=1)
    max_failures_per_user_total: int = Field(
        50, ge=1, description="failed logins of a name from all addresses it never logged in from"
    )
    lockout_seconds: float = Field(300.0, ge=1, description="window and length of a lockout")
    known_address_seconds: float = Field(
        30 * 86400, ge=0, description="an address a user logged in from is spared this long"
    )
    login_threads: int = Field(
        4, ge=1, le=256, description="threads that check passwords (PAM, argon2), no others"
    )
    account_cache_seconds: float = Field(
        60.0, ge=0, description="reuse a user's ids and groups this long between requests; 0: never"
    )

    @field_validator("backend")
    @classmethod
    def _authenticator_plugin(cls, name: str) -> str:
        return _registered(plugins.AUTHENTICATORS, name)


def _registered(group: str, name: str) -> str:
    """``name`` if a plug-in of ``group`` is registered under it."""
    if name not in plugins.registered(group):
        known = ", ".join(plugins.registered(group)) or "none"
        raise ValueError(f"{name!r} is not an installed plug-in of {group}; installed: {known}")
    return name


class AuditConfig(_Section):
    file: str = Field(
        "", description="one JSON line per action: a path, '-' for stdout, '' for none"
    )


class LimitsConfig(_Section):
    timeout: float = Field(60.0, gt=0, description="seconds a user command may run")
    output_bytes: int = Field(1024 * 1024, ge=1024, description="stdout+stderr cap")
    scheduler_timeout: float = Field(30.0, gt=0, description="seconds a scheduler call may take")
    scheduler_output_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    script_bytes: int = Field(1024 * 1024, ge=1024, description="largest job script accepted")
    max_processes: int = Field(
        256, ge=8, description="processes one action may have at once (cgroup pids.max)"
    )
    max_memory_bytes: int = Field(
        8 * 1024**3,
        ge=16 * 1024**2,
        description="memory each process of an action may map (RLIMIT_AS; over SSH ulimit -v)",
    )
    max_upload_bytes: int = Field(
        64 * 1024**3, ge=1024, description="largest file upload (PUT/POST /api/file); past it: 413"
    )
    transfer_timeout: float = Field(
        3600.0, gt=0, description="seconds a file transfer, copy or checksum may take"
    )
    listing_page_size: int = Field(
        1000, ge=1, le=100_000, description="most entries of one directory listing page"
    )


class LimitsOverride(_Section):
    """Per-machine overrides of [limits]; unset keys keep the global value."""

    timeout: float | None = Field(None, gt=0)
    output_bytes: int | None = Field(None, ge=1024)
    scheduler_timeout: float | None = Field(None, gt=0)
    scheduler_output_bytes: int | None = Field(None, ge=1024)
    max_processes: int | None = Field(None, ge=8)
    max_memory_bytes: int | None = Field(None, ge=16 * 1024**2)
    max_upload_bytes: int | None = Field(None, ge=1024)
    transfer_timeout: float | None = Field(None, gt=0)
    listing_page_size: int | None = Field(None, ge=1, le=100_000)


class StoreConfig(_Section):
    backend: Literal["memory", "redis"] = Field(
        "memory", description="memory: one process, monitors embedded; redis: shared"
    )
    redis_url: str = "redis://127.0.0.1:6379/0"
    prefix: str = Field("hpcgate:", description="prepended to every Redis key")
    timeout: float = Field(2.0, gt=0, description="seconds a Redis command may take")
    check_interval: float = Field(
        0.05,
        ge=0,
        le=5,
        description="redis: seconds a process trusts the last snapshot stamps it read before "
        "reading them again (a new snapshot is seen that much later); 0: on every read",
    )
    idempotency_ttl: float = Field(
        86400.0, gt=0, description="seconds an Idempotency-Key of POST /api/job is remembered"
    )
    path: Path | None = Field(
        None,
        description="memory backend: the SQLite file of Idempotency-Key records; default "
        "hpcgate-state.sqlite beside the config file, else in $STATE_DIRECTORY or /var/lib/hpcgate",
    )


class StatusConfig(_Section):
    public: bool = Field(True, description="GET /api/job without a login")
    stale_after: float = Field(30.0, gt=0, description="seconds without a snapshot: stale")
    queue_max_age: float = Field(
        10.0, ge=0, description="serve queue listings from snapshots younger than this; 0: never"
    )
    snapshot_ttl: float = Field(86400.0, gt=0, description="seconds a snapshot is kept")


class MonitorConfig(_Section):
    interval: float = Field(
        5.0, gt=0, description="seconds between probes of a machine, on average (±20%)"
    )
    history: int = Field(20, ge=1, le=10000, description="health = success rate of last N")
    account: str | None = Field(
        None, description="Unix account probes run as; default nobody (root) or the service user"
    )
    embedded: bool | None = Field(
        None, description="run monitors inside serve; default: only with the memory store"
    )


class MetricsConfig(_Section):
    """Who may read GET /metrics, and where several gateway processes pool their figures."""

    enabled: bool = Field(True, description="serve GET /metrics (Prometheus text format)")
    token: str = Field("", description="when set, /metrics needs 'Authorization: Bearer <token>'")
    allow: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="client addresses (CIDRs) that may read /metrics; [] allows any",
    )
    multiprocess_dir: Path | None = Field(
        None,
        description="with server.workers > 1, where the processes pool their figures; "
        "default: a private temporary directory",
    )

    @field_validator("allow")
    @classmethod
    def _networks(cls, allow: list[str]) -> list[str]:
        for network in allow:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"{network!r} is not an address or a CIDR network") from None
        return allow


class HealthConfig(_Section):
    connect_timeout: float = Field(
        2.0, gt=0, description="seconds GET /readyz waits for a TCP connection to a login node"
    )


class EventsConfig(_Section):
    """Job events from the monitors' snapshots: kept per user, streamed, pushed."""

    enabled: bool = Field(True, description="monitors turn snapshot changes into job events")
    retention: float = Field(7 * 86400, gt=0, description="seconds events are kept")
    max_per_user: int = Field(
        10000,
        ge=10,
        description="events kept per user (the newest; the embedded store cuts every 32)",
    )
    finished_ttl: float = Field(
        7 * 86400, gt=0, description="seconds the final record of an ended job is kept"
    )
    accounting_wait: float = Field(
        120.0, ge=0, description="seconds a job that left the queue waits for accounting"
    )
    heartbeat: float = Field(15.0, gt=0, description="seconds between SSE keep-alive comments")
    client_queue: int = Field(
        1000, ge=1, description="events buffered for one stream client; past it, it is dropped"
    )
    max_wait: float = Field(60.0, gt=0, description="longest ?wait= of the JSON long poll")


class WebhooksConfig(_Section):
    """Signed webhook deliveries of job events."""

    deliver: bool = Field(True, description="this serve process delivers webhooks")
    allow: list[str] = Field(
        default_factory=list,
        description="networks a destination may be in although private, loopback or "
        "link-local, e.g. ['10.1.0.0/16', '127.0.0.1/32']",
    )
    timeout: float = Field(10.0, gt=0, description="seconds a delivery may take")
    max_attempts: int = Field(12, ge=1, description="attempts per delivery, then given up")
    retry_base: float = Field(10.0, gt=0, description="seconds before the first retry")
    retry_max: float = Field(3600.0, gt=0, description="longest pause between two retries")
    disable_after: int = Field(
        20, ge=1, description="failed attempts in a row that disable a subscription"
    )
    max_per_user: int = Field(100, ge=1, description="subscriptions per user")
    lifetime: float = Field(
        30 * 86400, gt=0, description="seconds a subscription lasts unless it says otherwise"
    )
    log_size: int = Field(200, ge=1, description="deliveries kept in a subscription's log")
    concurrency: int = Field(32, ge=1, description="deliveries in flight in one process")


class SshConfig(_Section):
    """How the ssh runner reaches a machine's login nodes."""

    hosts: list[str] = Field(min_length=1, description="login nodes, 'host' or 'host:port'")
    known_hosts: Path = Field(description="the login nodes' host keys; always checked")
    ca_key: Path = Field(description="the gateway's SSH CA private key (mode 0600)")
    certificate_validity: float = Field(600.0, ge=60, description="seconds a user cert lasts")
    idle_timeout: float = Field(
        300.0, ge=0, description="close connections idle this long; 0: one per request"
    )
    max_connections: int = Field(200, ge=1, description="open connections, all users")
    max_sessions: int = Field(10, ge=1, description="channels per connection (MaxSessions)")
    keepalive_interval: float = Field(15.0, gt=0)
    connect_timeout: float = Field(10.0, gt=0)
    host_retry_after: float = Field(30.0, ge=0, description="skip a failed host this long")


class MachineConfig(_Section):
    runner: str = Field("local", description="an hpcgate.runners plug-in: local, ssh, ...")
    scheduler: str = Field("slurm", description="an hpcgate.schedulers plug-in: slurm, ...")
    description: str = ""
    commands: dict[str, str] = Field(
        default_factory=dict,
        description="renamed scheduler commands, e.g. {sbatch = 'yhbatch'}",
    )
    environment: dict[str, str] = Field(
        default_factory=dict, description="extra environment for every action (e.g. SLURM_CONF)"
    )
    path: str | None = Field(
        None,
        description="PATH of every action; default: local /usr/local/bin:/usr/bin:/bin, "
        "ssh the login shell's",
    )
    ssh: SshConfig | None = None
    limits: LimitsOverride = Field(default_factory=LimitsOverride)
    probe_command: list[str] | None = Field(
        None, description="an extra health test the monitor runs (argv); non-zero exit fails"
    )

    options: dict[str, Any] = Field(
        default_factory=dict, description="settings for an out-of-tree runner or scheduler"
    )

    @field_validator("runner")
    @classmethod
    def _runner_plugin(cls, name: str) -> str:
        return _registered(plugins.RUNNERS, name)

    @field_validator("scheduler")
    @classmethod
    def _scheduler_plugin(cls, name: str) -> str:
        return _registered(plugins.SCHEDULERS, name)

    @model_validator(mode="after")
    def _runner_settings(self) -> MachineConfig:
        if self.runner == "ssh" and self.ssh is None:
            raise ValueError("runner = 'ssh' needs an [machines.<name>.ssh] section")
        return self

    def effective_limits(self, defaults: LimitsConfig) -> LimitsConfig:
        """The global limits with this machine's overrides applied."""
        overrides = self.limits.model_dump(exclude_none=True)
        return defaults.model_copy(update=overrides)


class Config(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    status: StatusConfig = Field(default_factory=StatusConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    webhooks: WebhooksConfig = Field(default_factory=WebhooksConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    health: HealthConfig = Field(default_factory=HealthConfig)
    machines: dict[str, MachineConfig] = Field(default_factory=dict)

    @property
    def embedded_monitors(self) -> bool:
        """Whether ``serve`` runs the monitors itself."""
        if self.monitor.embedded is not None:
            return self.monitor.embedded
        return self.store.backend == "memory"

    @field_validator("machines")
    @classmethod
    def _machine_names(cls, machines: dict[str, MachineConfig]) -> dict[str, MachineConfig]:
        for name in machines:
            if not re.match(MACHINE_NAME_PATTERN, name):
                raise ValueError(f"machine name {name!r} must match {MACHINE_NAME_PATTERN}")
        return machines


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env_overrides(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == f"{ENV_PREFIX}CONFIG":
            continue
        path = [part.lower() for part in key[len(ENV_PREFIX) :].split("__")]
        if not all(path):
            raise ConfigError(f"{key}: empty part in the setting's path")
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {part!r} is a value, not a section")
            node = child
        node[path[-1]] = _parse_env_value(raw)


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file at ``path`` (or ``$HPCGATE_CONFIG``), then apply env overrides."""
    environ = os.environ if environ is None else environ
    path = path or environ.get(f"{ENV_PREFIX}CONFIG")
    data: dict[str, Any] = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    _apply_env_overrides(data, environ)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_problem(err["loc"], err["msg"]) for err in exc.errors())
        raise ConfigError(f"invalid configuration ({path or 'defaults'}): {problems}") from None
    server = config.server
    if (server.tls_certfile is None) != (server.tls_keyfile is None):
        raise ConfigError(
            "server.tls_certfile and server.tls_keyfile go together: set both (HTTPS) or "
            "neither (plain HTTP, e.g. behind a reverse proxy)"
        )
    if config.auth.backend == "users_file" and config.auth.users_file is None:
        raise ConfigError("auth.backend = 'users_file' needs auth.users_file = '<path>'")
    if path:
        base = Path(path).parent
        if config.auth.users_file is not None:
            config.auth.users_file = _relative_to(base, config.auth.users_file)
        if server.tls_certfile is not None and server.tls_keyfile is not None:
            server.tls_certfile = _relative_to(base, server.tls_certfile)
            server.tls_keyfile = _relative_to(base, server.tls_keyfile)
        config.store.path = _relative_to(base, config.store.path or Path("hpcgate-state.sqlite"))
        for machine in config.machines.values():
            if machine.ssh is not None:
                machine.ssh.known_hosts = _relative_to(base, machine.ssh.known_hosts)
                machine.ssh.ca_key = _relative_to(base, machine.ssh.ca_key)
    for setting, file in (
        ("server.tls_certfile", server.tls_certfile),
        ("server.tls_keyfile", server.tls_keyfile),
        ("auth.users_file", config.auth.users_file),
    ):
        if file is not None and not os.access(file, os.R_OK):
            raise ConfigError(f"{setting}: {file} does not exist or is not readable")
    return config


def _problem(location: tuple[int | str, ...], message: str) -> str:
    """One validation problem as ``setting.path: what is wrong``."""
    message = message.removeprefix("Value error, ")
    return f"{'.'.join(str(part) for part in location)}: {message}"


def _relative_to(base: Path, path: Path) -> Path:
    return path if path.is_absolute() else (base / path).resolve()
