"""An out-of-tree runner plug-in, as a third-party package would ship one.

It is the local runner, plus a line per program it starts in a file the machine's
``options.journal`` names: enough to prove that a gateway built it by entry point, from
the configuration, and sent its actions through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hpcgate.accounts import UnixAccount
from hpcgate.config import ConfigError, MachineConfig
from hpcgate.plugins import BuildContext
from hpcgate.process import Completed, Limits
from hpcgate.runners.local import LocalRunner


class JournalingRunner(LocalRunner):
    """The local runner, journaling each program it starts."""

    def __init__(self, journal: Path, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.journal = journal

    @classmethod
    def from_config(
        cls, name: str, machine: MachineConfig, context: BuildContext
    ) -> JournalingRunner:
        journal = machine.options.get("journal")
        if not isinstance(journal, str):
            raise ConfigError(f"machines.{name}.options.journal: give a file path")
        return cls(Path(journal), environment=machine.environment)

    async def run(
        self,
        account: UnixAccount,
        argv: Sequence[str],
        *,
        limits: Limits,
        stdin: bytes | None = None,
        cwd: str | None = None,
    ) -> Completed:
        with self.journal.open("a") as journal:
            journal.write(f"{account.name} {argv[0]}\n")
        return await super().run(account, argv, limits=limits, stdin=stdin, cwd=cwd)
