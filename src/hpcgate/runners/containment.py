"""Containing a local action: everything it starts is found and killed when it ends.

A process group is not enough: ``setsid``, ``set -m`` and daemons leave it. Where the
host allows it, each action gets a cgroup of its own, which no process can leave:

* a cgroup v2 (``<mount>/<the gateway's cgroup>/hpcgate.actions/<action>``): its
  ``cgroup.kill`` kills every process in it at once, and, when the pids controller is
  enabled there, ``pids.max`` bounds how many processes the action has at once;
* on a hybrid host whose pids controller is still on cgroup v1 (as here), the action also
  gets a v1 pids cgroup for ``pids.max``.

The child enters its cgroups itself, as root, before it executes ``chroot`` (and so
before the user's program can fork): a tiny ``sh`` writes its own PID into each
``cgroup.procs`` and then ``exec``\\s the action.

Without any usable cgroup (a gateway not running as root, a host without cgroupfs) the
fallback is weaker and documented in docs/security.md: every action carries a marker in
its environment, and its end kills its process group, its session and every process whose
environment carries the marker, which catches ``nohup``, ``set -m`` and ``setsid`` but not
a process that clears its environment after leaving the session; the process count is
bounded with ``RLIMIT_NPROC`` (via ``prlimit``), which counts *all* of the user's
processes, not just the action's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import secrets
import shutil
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

ACTION_MARKER = "HPCGATE_ACTION"
"""The environment variable that names an action (the fallback finds its processes by it)."""

JOB_DAEMONS = ("slurmstepd",)
"""The root daemons that start batch jobs' processes (Slurm's step daemon). A job carries
the environment of the action that submitted it, marker included (sbatch hands it on), so
a marked process that is a job's is the scheduler's, and is spared: a job must not die
because the submit that created it ended (on a login node that also runs jobs). A job's
process is one in a job's cgroup (JOB_CGROUP) or one that descends from one of these
daemons running as root; a user's process can pose as neither. What a user starts under
``salloc`` on the login node is no job's: it is killed."""

JOB_CGROUP = (
    r"^[0-9]+:[^:]*:/(slurm[^/]*/uid_[0-9]+/job_[0-9]+"
    r"|system\.slice/slurmstepd[^/]*\.scope/job_[0-9]+)(/|$)"
)
"""A line of ``/proc/<pid>/cgroup`` (extended regular expression, for Python and grep)
that puts the process in a Slurm job's cgroup (``proctrack/cgroup``, cgroup v1 or v2):
made by slurmd as root, where no user can make one. It holds for a job's process that
left its step's process tree, and where ``hidepid`` hides root's processes from the
scan over SSH."""
_JOB_CGROUP = re.compile(JOB_CGROUP.encode(), re.MULTILINE)
_MAX_DEPTH = 64  # ancestors looked at: a process tree is never this deep

_PARENT = "hpcgate.actions"
_ENTER = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
_KILL_ROUNDS = 200
_KILL_PAUSE = 0.01
_numbers = itertools.count()


def write_control(path: Path, value: str) -> None:
    """Write a cgroup control file in one system call (pathlib's text layer costs more
    than the write itself, and an action writes several)."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def read_control(path: Path) -> str:
    """The whole of a cgroup control file (a cgroup.procs may be long)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    finally:
        os.close(fd)


def _mounts() -> Iterator[tuple[str, Path, set[str]]]:
    """(filesystem type, mount point, options) of every cgroup mount."""
    with contextlib.suppress(OSError), open("/proc/self/mounts") as mounts:
        for line in mounts:
            _, point, kind, options, *_ = line.split()
            if kind in ("cgroup", "cgroup2"):
                yield kind, Path(point), set(options.split(","))


def _own_cgroups() -> dict[str, str]:
    """The gateway's own cgroup per hierarchy: '' for v2, else the controller list."""
    own: dict[str, str] = {}
    with contextlib.suppress(OSError), open("/proc/self/cgroup") as cgroups:
        for line in cgroups:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            own[controllers] = path
    return own


def _make_parent(mount: Path, own: str) -> Path | None:
    parent = mount / own.lstrip("/") / _PARENT
    try:
        parent.mkdir(exist_ok=True)
    except OSError as exc:
        log.info("no action cgroups under %s: %s", parent.parent, exc.strerror)
        return None
    return parent


def _end_orphans(parent: Path, only: int | None = None) -> set[int]:
    """Kill what actions of gateway processes that are gone (or of gone process ``only``)
    left running (a gateway killed with ``kill -9`` leaves its actions behind, e.g. a
    submit that would still create a job after a restart): each action's cgroup is named
    after the gateway's PID. Returns the gone gateways whose cgroups were found."""
    found: set[int] = set()
    for cgroup in parent.iterdir():
        owner = cgroup.name.partition("-")[0]
        if not cgroup.is_dir() or not owner.isdigit() or Path(f"/proc/{owner}").exists():
            continue
        if only is not None and int(owner) != only:
            continue
        found.add(int(owner))
        members: list[str] = []
        with contextlib.suppress(OSError):
            members = (cgroup / "cgroup.procs").read_text().split()
        if members:
            with contextlib.suppress(OSError):
                (cgroup / "cgroup.kill").write_text("1")
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            log.warning("ended %d processes a gone gateway (pid %s) left", len(members), owner)
        with contextlib.suppress(OSError):  # empty once its processes are reaped
            cgroup.rmdir()
    return found


def _in_a_job(pid: int) -> bool:
    """Whether process ``pid`` is a batch job's: in a job's cgroup, or descending from a
    job daemon running as root (JOB_CGROUP, JOB_DAEMONS)."""
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as cgroups:
            if _JOB_CGROUP.search(cgroups.read()):
                return True
    except OSError:
        return False
    for _ in range(_MAX_DEPTH):
        if pid <= 1:
            return False
        found = _name_parent_uid(pid)
        if found is None:
            return False
        name, parent, uid = found
        if name in JOB_DAEMONS and uid == 0:
            return True
        pid = parent
    return False


def _name_parent_uid(pid: int) -> tuple[str, int, int] | None:
    """The name, parent and real uid of process ``pid`` (from its status: the files of
    an undumpable process are all root's, its uid there is its own)."""
    fields: dict[bytes, bytes] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                key, _, value = line.partition(b":")
                fields[key] = value.strip()
                if key == b"Uid":
                    break
        return (
            fields[b"Name"].decode(errors="replace"),
            int(fields[b"PPid"]),
            int(fields[b"Uid"].split()[0]),
        )
    except (OSError, KeyError, ValueError, IndexError):
        return None


def _enable_pids(parent: Path) -> bool:
    """Enable the v2 pids controller for the children of ``parent``, if the host lets us."""
    if "pids" not in (parent / "cgroup.controllers").read_text().split():
        with contextlib.suppress(OSError):  # enable it on the way down, where allowed
            (parent.parent / "cgroup.subtree_control").write_text("+pids")
    try:
        (parent / "cgroup.subtree_control").write_text("+pids")
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Containment:
    """How this host contains local actions; discovered once, when the runner is built."""

    v2_parent: Path | None = None
    """Where each action's cgroup v2 is made (None: no usable cgroup v2)."""
    v2_pids: bool = False
    """Whether those cgroups have the pids controller (pids.max)."""
    v1_pids_parent: Path | None = None
    """Where each action's v1 pids cgroup is made, when pids is not on v2."""
    prlimit: str | None = None
    """The prlimit program, for RLIMIT_NPROC when no cgroup bounds the process count."""
    ended: set[int] = field(default_factory=set, compare=False)
    """Gone gateway processes whose actions' cgroups were found here and killed."""

    @classmethod
    def discover(cls) -> Containment:
        """The best containment this host allows the gateway (cgroups need root)."""
        prlimit = shutil.which("prlimit") or shutil.which("/usr/bin/prlimit")
        if os.geteuid() != 0:
            return cls(prlimit=prlimit)
        own = _own_cgroups()
        v2_parent = v1_pids_parent = None
        v2_pids = False
        for kind, mount, options in _mounts():
            if kind == "cgroup2" and v2_parent is None:
                v2_parent = _make_parent(mount, own.get("", "/"))
                v2_pids = v2_parent is not None and _enable_pids(v2_parent)
            elif kind == "cgroup" and "pids" in options and v1_pids_parent is None:
                v1_pids_parent = _make_parent(mount, own.get("pids", "/"))
        if v2_pids:
            v1_pids_parent = None
        ended: set[int] = set()
        for parent in (v2_parent, v1_pids_parent):
            if parent is not None:
                ended |= _end_orphans(parent)
        found = cls(v2_parent, v2_pids, v1_pids_parent, prlimit, ended)
        log.info("local actions are contained by %s", found.describe())
        return found

    def end_actions_of(self, pid: int) -> bool:
        """End whatever gone gateway process ``pid`` left running; True when none of its
        actions can still run: its actions' cgroups were found here (at discovery or now),
        killed and removed. False while ``pid`` lives, while a killed process is not yet
        reaped, when none of its cgroups was ever found here, and where actions are not
        in cgroups (what it left cannot then be found)."""
        parents = [parent for parent in (self.v2_parent, self.v1_pids_parent) if parent]
        if not parents or Path(f"/proc/{pid}").exists():
            return False
        for parent in parents:
            self.ended.update(_end_orphans(parent, only=pid))
        if pid not in self.ended:
            # Nothing of it here: it had no action running, or it ran under another
            # cgroup (another service unit), where its actions may still run.
            return False
        # Only once every cgroup of its actions is removed: a child still on its way in
        # then fails to enter and exits before running anything.
        return not any(any(parent.glob(f"{pid}-*")) for parent in parents)

    def describe(self) -> str:
        """What contains an action and what bounds its process count, in words."""
        tracked = (
            f"a cgroup v2 under {self.v2_parent}"
            if self.v2_parent
            else "their process group, session and environment marker (no cgroup)"
        )
        if self.v2_pids:
            bounded = "its pids.max"
        elif self.v1_pids_parent:
            bounded = f"a v1 pids cgroup under {self.v1_pids_parent}"
        elif self.prlimit:
            bounded = "RLIMIT_NPROC (per user, not per action)"
        else:
            bounded = "nothing"
        return f"{tracked}; process count bounded by {bounded}"

    def start(self, max_processes: int, max_memory_bytes: int | None = None) -> ActionScope:
        """A new, empty scope for one action (its cgroups made, not yet entered)."""
        name = f"{os.getpid()}-{next(_numbers)}"
        made: list[Path] = []
        try:
            for parent in (self.v2_parent, self.v1_pids_parent):
                if parent is not None:
                    (parent / name).mkdir()
                    made.append(parent / name)
            for cgroup in made:
                if cgroup.parent == self.v1_pids_parent or self.v2_pids:
                    write_control(cgroup / "pids.max", str(max_processes))
        except OSError as exc:
            for cgroup in made:
                with contextlib.suppress(OSError):
                    cgroup.rmdir()
            raise RuntimeError(f"cannot make the action's cgroup: {exc}") from exc
        bounded_by_cgroup = self.v2_pids or self.v1_pids_parent is not None
        return ActionScope(
            marker=secrets.token_hex(12),
            cgroups=made,
            nproc_limit=None if bounded_by_cgroup or not self.prlimit else max_processes,
            prlimit=self.prlimit,
            memory_limit=max_memory_bytes,
        )


@dataclass
class ActionScope:
    """One action's containment: how to start it inside, and how to kill all of it."""

    marker: str
    cgroups: list[Path]
    nproc_limit: int | None
    prlimit: str | None
    leader: int | None = None
    memory_limit: int | None = None
    """RLIMIT_AS of each process of the action (None: unbounded)."""

    def limited(self, argv: Sequence[str], *, nproc: bool = True) -> list[str]:
        """``argv`` started under the action's resource limits (via ``prlimit``): its
        address space always, its process count when no cgroup bounds it (``nproc``)."""
        options = []
        if self.memory_limit is not None:
            options.append(f"--as={self.memory_limit}:{self.memory_limit}")
        if nproc and self.nproc_limit is not None:
            options.append(f"--nproc={self.nproc_limit}:{self.nproc_limit}")
        if not options or self.prlimit is None:
            return list(argv)
        return [self.prlimit, *options, "--", *argv]

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` started so that it enters the action's cgroups before anything else."""
        words = self.limited(argv)
        if self.cgroups:
            procs = [str(cgroup / "cgroup.procs") for cgroup in self.cgroups]
            words = ["/bin/sh", "-c", _ENTER, "hpcgate-enter", *procs, "--", *words]
        return words

    async def kill(self) -> None:
        """Kill every process of the action and wait until none is left; then clean up."""
        if self.cgroups:
            await self._kill_cgroups()
        else:
            await self._kill_marked()

    def _members(self) -> set[int]:
        members: set[int] = set()
        for cgroup in self.cgroups:
            with contextlib.suppress(OSError):
                members.update(int(pid) for pid in read_control(cgroup / "cgroup.procs").split())
        return members

    async def _kill_cgroups(self) -> None:
        # Nothing can enter an action's cgroups but through the gateway, so one that is
        # empty once stays empty: most actions end with nothing left to kill.
        kill_file = self.cgroups[0] / "cgroup.kill"
        for _ in range(_KILL_ROUNDS):
            members = self._members()
            if not members:
                break
            with contextlib.suppress(OSError):  # cgroup.kill: Linux 5.14 and later
                write_control(kill_file, "1")
            for pid in members:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(_KILL_PAUSE)
        for cgroup in self.cgroups:
            try:
                cgroup.rmdir()
            except OSError as exc:
                log.error("action cgroup %s not removed: %s", cgroup, exc.strerror)

    def _marked(self) -> set[int]:
        """The processes of the action's session or group, or carrying its marker (but
        for a batch job's: see JOB_DAEMONS)."""
        wanted = f"{ACTION_MARKER}={self.marker}".encode()
        found: set[int] = set()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                with open(f"/proc/{pid}/stat", "rb") as stat:
                    if stat.read().rpartition(b")")[2].split()[0] == b"Z":
                        continue  # dead already, waiting for its parent
                if self.leader is not None and self.leader in (os.getsid(pid), os.getpgid(pid)):
                    found.add(pid)
                    continue
                with open(f"/proc/{pid}/environ", "rb") as environ:
                    if wanted in environ.read().split(b"\0") and not _in_a_job(pid):
                        found.add(pid)
            except OSError:
                continue  # gone, or not ours to read
        found.discard(os.getpid())
        return found

    async def _kill_marked(self) -> None:
        for _ in range(_KILL_ROUNDS):
            marked = await asyncio.to_thread(self._marked)
            for pid in marked:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if not marked:
                return
            await asyncio.sleep(_KILL_PAUSE)
        log.error("action %s: processes still alive after SIGKILL", self.marker)
