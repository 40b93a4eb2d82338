"""The gateway's parts wired together: login and the configured machines."""

from __future__ import annotations

import logging

from hpcgate.auth import LoginService, SessionStore, build_authenticator
from hpcgate.config import Config
from hpcgate.errors import NotFound
from hpcgate.machine import Machine, build_machines

log = logging.getLogger(__name__)


class Gateway:
    """Everything a request needs, built once from the configuration."""

    def __init__(self, config: Config, login: LoginService, machines: dict[str, Machine]) -> None:
        self.config = config
        self.login = login
        self.machines = machines

    @classmethod
    def from_config(cls, config: Config) -> Gateway:
        login = LoginService(build_authenticator(config.auth), SessionStore(), config.auth)
        return cls(config, login, build_machines(config))

    def machine(self, name: str) -> Machine:
        """The machine called ``name``; NotFound names the ones that exist."""
        try:
            return self.machines[name]
        except KeyError:
            known = ", ".join(sorted(self.machines)) or "none configured"
            raise NotFound(f"unknown machine {name[:64]!r}; machines: {known}") from None
