"""Monitors: probe each machine on an interval and write snapshots to the store.

One probe is one all-users job listing and one node listing (two scheduler calls however
many users poll the gateway), plus the machine's optional ``probe_command``. A monitor
survives a failing scheduler, a bad line of output and a store that comes and goes: it
records the failure and keeps probing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from hpcgate.accounts import UnixAccount
from hpcgate.config import MonitorConfig, StatusConfig
from hpcgate.errors import GatewayError
from hpcgate.services.events import AccountingRead, EventService
from hpcgate.services.machine import Machine
from hpcgate.stores.base import StatusStore, StoreUnavailable
from hpcgate.stores.snapshot import JobTally, Snapshot, Survey

log = logging.getLogger(__name__)
JITTER = 0.2  # each interval between probes is 0.8x to 1.2x monitor.interval


class Monitor:
    """Keeps the store's snapshots of some machines fresh."""

    def __init__(
        self,
        machines: dict[str, Machine],
        store: StatusStore,
        account: UnixAccount,
        config: MonitorConfig,
        status: StatusConfig,
        *,
        events: EventService | None = None,
    ) -> None:
        self.machines = machines
        self.events = events
        self.store = store
        self.account = account
        self.config = config
        self.status = status
        self._last: dict[str, Snapshot] = {}

    async def _previous(self, name: str) -> Snapshot | None:
        if name not in self._last:
            try:  # a restarted monitor continues the health history and keeps old data
                previous = await self.store.get(name)
            except StoreUnavailable:
                previous = None
            if previous is not None:
                self._last[name] = previous
        return self._last.get(name)

    async def probe(self, name: str) -> Snapshot:
        """Probe one machine once; never raises for a sick scheduler."""
        machine = self.machines[name]
        previous = await self._previous(name)
        taken, started = time.time(), time.monotonic()
        error = ""
        data_taken: float | None = None
        try:
            jobs, partitions = await machine.survey(self.account)
            data_taken = taken
        except GatewayError as exc:
            error = exc.message
        except Exception as exc:  # a parser bug must not kill the monitor
            log.exception("probe of %s failed unexpectedly", name)
            error = f"probe failed: {exc!r}"
        if not error and machine.probe_command:
            error = await self._probe_command(machine)
        history = (previous.probes if previous else ()) + (not error,)
        keep = self.config.history
        ok, seconds, probes = not error, round(time.monotonic() - started, 4), history[-keep:]
        snapshot: Snapshot
        if data_taken is None:  # keep showing the last good data; data_taken tells its age
            snapshot = Snapshot(
                name,
                taken,
                ok,
                seconds,
                probes,
                error,
                data_taken=previous.data_taken if previous else None,
                partitions=previous.partitions if previous else {},
                tally=previous.tally if previous else JobTally(),
            )
        else:
            snapshot = Survey(
                name, taken, ok, seconds, probes, error, data_taken, partitions, jobs=tuple(jobs)
            )
        self._last[name] = snapshot
        return snapshot

    async def _probe_command(self, machine: Machine) -> str:
        """Run the machine's extra health test; its failure as text, or ''."""
        assert machine.probe_command is not None
        try:
            done = await machine.runner.run(
                self.account, machine.probe_command, limits=machine.scheduler_limits
            )
        except GatewayError as exc:
            return f"probe command failed: {exc.message}"
        if done.ok:
            return ""
        return f"probe command exited {done.returncode}: {done.stderr.strip()[:200]}"

    async def _probe_and_store(self, name: str) -> Snapshot:
        # accounting's endings are read while the queue is listed, not after it
        accounting = asyncio.create_task(self._read_accounting(name))
        try:
            snapshot = await self.probe(name)
            if snapshot.error:
                log.warning("probe of %s failed: %s", name, snapshot.error)
            try:
                await self.store.put(snapshot, ttl=self.status.snapshot_ttl)
            except StoreUnavailable as exc:
                log.warning("could not store the snapshot of %s: %s", name, exc.message)
            # no events come of a failed probe: its accounting read is not needed
            read = await accounting if snapshot.ok else None
        finally:
            accounting.cancel()  # done by now, or not needed
        if snapshot.ok and isinstance(snapshot, Survey):
            await self._job_events(name, snapshot, read)
        return snapshot

    async def _read_accounting(self, name: str) -> AccountingRead | None:
        if self.events is None:
            return None
        try:
            return await self.events.read_accounting(self.machines[name], self.account)
        except Exception:  # a parser bug must not stop the snapshots; observe reads again
            log.exception("accounting of %s failed unexpectedly", name)
            return None

    async def _job_events(
        self, name: str, survey: Survey, accounting: AccountingRead | None
    ) -> None:
        """Events from the differences with the last snapshot (and accounting's endings).
        A failure leaves the reported states as they were: the next probe tries again."""
        if self.events is None:
            return
        try:
            await self.events.observe(self.machines[name], self.account, survey, accounting)
        except StoreUnavailable as exc:
            log.warning("could not record the job events of %s: %s", name, exc.message)
        except Exception:  # a bug here must not stop the snapshots
            log.exception("job events of %s failed unexpectedly", name)

    async def run_once(self) -> list[Snapshot]:
        """Probe every machine once, concurrently, and store the snapshots."""
        return list(await asyncio.gather(*(self._probe_and_store(n) for n in self.machines)))

    async def run_forever(self, stop: asyncio.Event | None = None) -> None:
        """Probe every ``interval`` seconds on average until ``stop`` is set (or the task
        is cancelled)."""
        stop = stop or asyncio.Event()
        log.info(
            "monitoring %s every %gs as %s",
            ", ".join(self.machines),
            self.config.interval,
            self.account.name,
        )
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.run_once()
            except Exception:  # pragma: no cover - run_once already contains failures
                log.exception("monitor round failed")
            # The next probe an interval later, give or take a fifth at random: the same
            # load on average, but never in lockstep with a periodic cycle of the
            # scheduler (slurmctld starts jobs on a one-second tick; at a fixed phase to
            # it, every start would wait the same part of the interval).
            period = self.config.interval * random.uniform(1 - JITTER, 1 + JITTER)
            pause = max(0.0, period - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=pause)
