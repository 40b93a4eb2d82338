"""Slurm: argument vectors for sbatch, squeue, sacct and scancel, and their parsers.

Output is read with explicit formats and the ASCII unit separator as the delimiter, so a
job name holding ``|`` or spaces cannot shift columns. Parsers tolerate extra columns,
state suffixes (``CANCELLED+``, ``CANCELLED by 1001``) and unknown lines.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import replace

from hpcgate.errors import BadRequest, Forbidden, GatewayError, NotFound, Unavailable
from hpcgate.jobspec import JobOptions
from hpcgate.runners.base import Completed
from hpcgate.schedulers.base import JobRecord, Scheduler

log = logging.getLogger(__name__)

SEP = "\x1f"
COMMANDS = ("sbatch", "squeue", "sacct", "scancel", "scontrol", "sinfo")

_QUEUE_FIELDS = (
    "JobID",
    "Name",
    "UserName",
    "State",
    "Partition",
    "TimeUsed",
    "NumNodes",
    "NumTasks",
    "ReasonList",
    "exit_code",
)
_HISTORY_FIELDS = (
    "JobID",
    "JobName",
    "User",
    "State",
    "Partition",
    "Elapsed",
    "NNodes",
    "NTasks",
    "NodeList",
    "ExitCode",
)
_UNAVAILABLE = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Zero Bytes were transmitted"
    r"|Connection refused|Problem talking to the database|slurm_persist_conn_open"
    r"|Transport endpoint is not connected|Communication connection failure"
    r"|backup controller in standby mode|Slurm temporarily unable",
    re.IGNORECASE,
)
_PERMISSION = re.compile(r"Access/permission denied|Permission denied|not the owner", re.I)
_INVALID_JOB = re.compile(r"Invalid job id specified", re.I)
_UNREADABLE_SCRIPT = re.compile(r"Unable to open file (.*)", re.I)
_SUBMITTED = re.compile(r"^\s*(\d+)(?:;\S*)?\s*$", re.M)


def _message(result: Completed) -> str:
    text = " ".join(line.strip() for line in result.stderr.splitlines() if line.strip())
    return text or f"{result.argv[0]} exited with status {result.returncode}"


def _rows(result: Completed, width: int) -> Iterator[list[str]]:
    """The delimited rows of a listing, cells stripped; unreadable lines are skipped."""
    for line in result.stdout.splitlines():
        cells = line.split(SEP)
        if len(cells) < width:
            if line.strip():
                log.warning("skipping an unreadable %s line: %r", result.argv[0], line[:200])
            continue
        yield [cell.strip() for cell in cells[:width]]


def _int(text: str) -> int:
    text = text.strip()
    return int(text) if text.isdigit() else 0


def _hms(elapsed: str) -> str:
    """squeue's ``M:SS`` / ``H:MM:SS`` / ``D-HH:MM:SS`` as sacct's ``HH:MM:SS``."""
    days, _, clock = elapsed.strip().rpartition("-")
    parts = clock.split(":")
    if not all(part.isdigit() for part in parts) or not 1 <= len(parts) <= 3:
        return elapsed.strip()
    while len(parts) < 3:
        parts.insert(0, "0")
    hms = ":".join(f"{int(part):02d}" for part in parts)
    return f"{days}-{hms}" if days else hms


def _exit_code(raw: str) -> str:
    """squeue's raw wait status (e.g. ``768``) as ``code:signal`` (``3:0``)."""
    raw = raw.strip()
    if ":" in raw:
        return raw
    if not raw.isdigit():
        return "0:0"
    status = int(raw)
    return f"{(status >> 8) & 0xFF}:{status & 0x7F}"


class Slurm(Scheduler):
    """Slurm through its command-line tools (22.05 and later)."""

    def __init__(self, commands: Mapping[str, str] | None = None) -> None:
        commands = dict(commands or {})
        unknown = set(commands) - set(COMMANDS)
        if unknown:
            raise ValueError(
                f"unknown Slurm command {sorted(unknown)[0]!r}; renamable: {', '.join(COMMANDS)}"
            )
        self.commands = {name: commands.get(name, name) for name in COMMANDS}

    # submit

    def submit_argv(self, script_path: str, options: JobOptions) -> list[str]:
        argv = [self.commands["sbatch"], "--parsable"]
        if options.working_dir is not None:
            argv.append(f"--chdir={options.working_dir}")
        if options.name is not None:
            argv.append(f"--job-name={options.name}")
        if options.time_limit_minutes is not None:
            argv.append(f"--time={options.time_limit_minutes}")
        if options.partition is not None:
            argv.append(f"--partition={options.partition}")
        if options.cores is not None:
            argv.append(f"--ntasks={options.cores}")
        if options.memory_mb is not None:
            argv.append(f"--mem={options.memory_mb}M")
        if options.nodes is not None:
            argv.append(f"--nodes={options.nodes}")
        argv += ["--", script_path, *options.script_args]
        return argv

    def parse_submit(self, result: Completed) -> str:
        if not result.ok:
            raise self._submit_error(result)
        match = _SUBMITTED.search(result.stdout)
        if match is None:
            raise Unavailable(f"sbatch printed no job id: {result.stdout.strip()[:200]!r}")
        return match.group(1)

    def _submit_error(self, result: Completed) -> GatewayError:
        message = _message(result)
        if _UNAVAILABLE.search(message):
            return Unavailable(f"the scheduler cannot be reached: {message}")
        unreadable = _UNREADABLE_SCRIPT.search(message)
        if unreadable:
            return BadRequest(
                f"the job script {unreadable.group(1).strip()} does not exist or cannot be read"
            )
        return BadRequest(f"Slurm rejected the job: {message}")

    # queue and live state

    def _squeue(self, *selection: str) -> list[str]:
        fmt = ",".join(f"{field}:{SEP}" for field in _QUEUE_FIELDS)
        return [self.commands["squeue"], "--noheader", *selection, f"--Format={fmt}"]

    def queue_argv(self, user: str) -> list[str]:
        return self._squeue(f"--user={user}")

    def all_jobs_argv(self) -> list[str]:
        return self._squeue("--all")

    def nodes_argv(self) -> list[str]:
        # one row per (partition, state) with its node count; %R is the partition name
        # without the default marker, %t the compact state (idle, alloc, mix, down*, ...)
        return [self.commands["sinfo"], "--noheader", f"--format=%R{SEP}%t{SEP}%D"]

    def parse_nodes(self, result: Completed) -> dict[str, dict[str, int]]:
        if not result.ok:
            raise self.error_for(result)
        partitions: dict[str, dict[str, int]] = {}
        for line in result.stdout.splitlines():
            cells = [cell.strip() for cell in line.split(SEP)]
            if len(cells) < 3 or not cells[2].isdigit():
                if line.strip():
                    log.warning("skipping an unreadable sinfo line: %r", line[:200])
                continue
            partition, state, count = cells[:3]
            # flags after the state: * not responding, ~ powered off, # powering up, ...
            state = state.rstrip("*~#!%$@^-") or "unknown"
            counts = partitions.setdefault(partition, {})
            counts[state] = counts.get(state, 0) + int(count)
        return partitions

    def live_job_argv(self, jobid: str) -> list[str]:
        return self._squeue("--states=all", f"--jobs={jobid}")

    def parse_queue(self, result: Completed) -> list[JobRecord]:
        if not result.ok:
            if _INVALID_JOB.search(result.stderr):
                return []
            raise self.error_for(result)
        records = []
        for cells in _rows(result, len(_QUEUE_FIELDS)):
            jobid, name, user, state, partition, used, nodes, tasks, reason, status = cells
            records.append(
                JobRecord(
                    id=jobid,
                    name=name,
                    user=user,
                    state=state,
                    partition=partition,
                    elapsed=used,
                    nodes=_int(nodes),
                    tasks=_int(tasks) or None,
                    nodelist=reason,
                    exit_code=_exit_code(status),
                )
            )
        return records

    # accounting

    def history_argv(self, jobid: str) -> list[str]:
        return [
            self.commands["sacct"],
            "--noheader",
            "--parsable2",
            f"--delimiter={SEP}",
            "--allusers",
            f"--jobs={jobid}",
            f"--format={','.join(_HISTORY_FIELDS)}",
        ]

    def parse_history(self, result: Completed) -> list[JobRecord]:
        if not result.ok:
            raise self.error_for(result)
        records = []
        for cells in _rows(result, len(_HISTORY_FIELDS)):
            jobid, name, user, state, partition, elapsed, nodes, tasks, nodelist, code = cells
            records.append(
                JobRecord(
                    id=jobid,
                    name=name,
                    user=user,
                    state=state,
                    partition=partition,
                    elapsed=elapsed,
                    nodes=_int(nodes),
                    tasks=_int(tasks) if tasks.isdigit() else None,
                    nodelist=nodelist,
                    exit_code=code or "0:0",
                )
            )
        return records

    def merge_job_views(
        self, jobid: str, live: JobRecord | None, history: list[JobRecord]
    ) -> list[JobRecord]:
        # Accounting lags the controller: for seconds after a job starts it shows a
        # placeholder row ("allocation", no partition, a stale state), and a pending job
        # may not be there at all. While the controller still knows the job, its row is
        # the truth; accounting adds the steps.
        jobs = [row for row in history if row.id == jobid]
        steps = [row for row in history if row.id.startswith(f"{jobid}.")]
        if live is not None:
            job = replace(live, elapsed=_hms(live.elapsed), tasks=None)
            ran_on = jobs[-1].nodelist if jobs else ""
            if live.nodelist.startswith("(") and ran_on and ran_on != "None assigned":
                job = replace(job, nodelist=ran_on)  # a finished job's reason -> its nodes
        elif jobs:
            job = jobs[-1]
        else:
            return []
        return [job, *steps]

    def history_is_final(self, jobid: str, history: list[JobRecord]) -> bool:
        # The placeholder row of a job accounting has not synced yet has no partition,
        # and may already say COMPLETED under the name "allocation".
        jobs = [row for row in history if row.id == jobid]
        return bool(jobs) and jobs[-1].finished and bool(jobs[-1].partition)

    # cancel

    def cancel_argv(self, jobid: str) -> list[str]:
        return [self.commands["scancel"], "--", jobid]

    def check_cancel(self, result: Completed) -> None:
        # scancel reports failures on stderr, sometimes with exit status 0.
        if result.ok and "error" not in result.stderr.lower():
            return
        raise self.error_for(result)

    # errors

    def error_for(self, result: Completed) -> GatewayError:
        message = _message(result)
        if _UNAVAILABLE.search(message):
            return Unavailable(f"the scheduler cannot be reached: {message}")
        if _PERMISSION.search(message):
            return Forbidden(message)
        if _INVALID_JOB.search(message):
            return NotFound(message)
        return Unavailable(f"the scheduler failed: {message}")
