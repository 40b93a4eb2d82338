"""The gateway: the parts a request needs, as built by :mod:`hpcgate.wiring`."""

from __future__ import annotations

import asyncio
import logging

from hpcgate.auth.login import LoginService
from hpcgate.config import Config
from hpcgate.errors import NotFound
from hpcgate.services.events import EventService
from hpcgate.services.files import FileService
from hpcgate.services.machine import Machine
from hpcgate.services.output import JobOutput
from hpcgate.services.status import StatusService
from hpcgate.stores.base import Stores

log = logging.getLogger(__name__)


class Gateway:
    """Login, the machines and the status view, over one family of stores."""

    def __init__(
        self,
        config: Config,
        login: LoginService,
        machines: dict[str, Machine],
        stores: Stores,
        status: StatusService,
        events: EventService | None = None,
        files: dict[str, FileService] | None = None,
        output: dict[str, JobOutput] | None = None,
    ) -> None:
        self.config = config
        self.events = events
        self.login = login
        self.machines = machines
        self.stores = stores
        self.status = status
        self.files = files or {}
        """The file service of each machine, by name."""
        self.output = output or {}
        """The job output service of each machine, by name."""

    def machine(self, name: str) -> Machine:
        """The machine called ``name``; NotFound names the ones that exist."""
        try:
            return self.machines[name]
        except KeyError:
            known = ", ".join(sorted(self.machines)) or "none configured"
            raise NotFound(f"unknown machine {name[:64]!r}; machines: {known}") from None

    def files_of(self, name: str) -> FileService:
        """The file service of machine ``name``; NotFound as :meth:`machine`."""
        self.machine(name)
        try:
            return self.files[name]
        except KeyError:
            raise NotFound(f"files are not available on {name}") from None

    def output_of(self, name: str) -> JobOutput:
        """The job output service of machine ``name``; NotFound as :meth:`machine`."""
        self.machine(name)
        try:
            return self.output[name]
        except KeyError:
            raise NotFound(f"job output is not available on {name}") from None

    async def close(self) -> None:
        """Record what the output services still hold, close every runner's
        connections, then the stores (at shutdown)."""
        for output in self.output.values():
            await output.flush()
        runners = {id(machine.runner): machine.runner for machine in self.machines.values()}
        for runner in runners.values():
            try:
                await asyncio.wait_for(runner.close(), timeout=10)
            except Exception:  # one runner failing to close must not keep the others open
                log.exception("closing the runner %r failed", runner)
        await self.stores.close()
