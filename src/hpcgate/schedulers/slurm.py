"""Slurm: argument vectors for sbatch, squeue, sacct and scancel, and their parsers.

A job name is the user's to write, with any character in it, so no output is split on a
character a name may hold. Every listing is printed with a delimiter made for that one
call (random, so nobody can know it when naming a job) after every field, the job id
first and the name last; each row is then validated column by column and a row that
does not validate is dropped and logged. Ownership is read from the numeric uid Slurm
records, never from a name. State suffixes (``CANCELLED+``, ``CANCELLED by 1001``) are
understood.
"""

from __future__ import annotations

import functools
import logging
import posixpath
import re
import secrets
import time
from collections.abc import Container, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from hpcgate.config import ConfigError, MachineConfig
from hpcgate.errors import BadRequest, Forbidden, GatewayError, NotFound, Unavailable
from hpcgate.jobspec import JobOptions
from hpcgate.process import Completed
from hpcgate.schedulers import slurm_rpc
from hpcgate.schedulers.base import Ending, JobRecord, OutputPaths, Phase, Scheduler

log = logging.getLogger(__name__)

SUBMIT_PATHS = ("sbatch", "rpc")
COMMANDS = ("sbatch", "squeue", "sacct", "scancel", "scontrol", "sinfo", "sdiag")

FINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "TIMEOUT",
    }
)
QUEUED_STATES = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"}
)
STATE_CODES = {
    "BOOT_FAIL": "BF",
    "CANCELLED": "CA",
    "COMPLETED": "CD",
    "COMPLETING": "CG",
    "CONFIGURING": "CF",
    "DEADLINE": "DL",
    "FAILED": "F",
    "NODE_FAIL": "NF",
    "OUT_OF_MEMORY": "OOM",
    "PENDING": "PD",
    "PREEMPTED": "PR",
    "REQUEUED": "RQ",
    "REQUEUE_FED": "RF",
    "REQUEUE_HOLD": "RH",
    "RESIZING": "RS",
    "REVOKED": "RV",
    "RUNNING": "R",
    "SIGNALING": "SI",
    "SPECIAL_EXIT": "SE",
    "STAGE_OUT": "SO",
    "STOPPED": "ST",
    "SUSPENDED": "S",
    "TIMEOUT": "TO",
}


def state_word(state: str) -> str:
    """Slurm's bare state word: ``CANCELLED by 1001`` and ``CANCELLED+`` are ``CANCELLED``."""
    return state.split(" ", 1)[0].rstrip("+").upper()


def phase_of(state: str) -> Phase | None:
    """The neutral phase of a Slurm state (None for an empty or unknown word)."""
    word = state_word(state)
    if word in FINAL_STATES:
        return Phase.FINISHED
    if word in QUEUED_STATES:
        return Phase.QUEUED
    if word in STATE_CODES:
        return Phase.RUNNING  # running, suspended, completing, stopped, signaling...
    return None


@functools.lru_cache(maxsize=256)
def classes_of(state: str) -> tuple[Phase | None, str]:
    """The phase and short code a Slurm state (as printed) says."""
    word = state_word(state)
    return phase_of(state), STATE_CODES.get(word, word[:2] or "??")


def classified(record: JobRecord) -> JobRecord:
    """``record`` with the phase and short code its Slurm state word says."""
    phase, code = classes_of(record.state)
    return replace(record, phase=phase, code=code)


# Free text a user writes (the job name) comes LAST in every format, the job id first.
_QUEUE_FIELDS = (
    "JobArrayID",  # the id as users see it: 123, 123_4, 123_[5-9], 123+1
    "UserID",
    "UserName",
    "State",
    "Partition",
    "TimeUsed",
    "NumNodes",
    "NumTasks",
    "ReasonList",
    "exit_code",
    "Name",
)
_HISTORY_FIELDS = (
    "JobID",
    "UID",
    "User",
    "State",
    "Partition",
    "Elapsed",
    "NNodes",
    "NTasks",
    "NodeList",
    "ExitCode",
    "JobName",
)
_NODES_FIELDS = ("%R", "%t", "%D")  # partition, compact state (idle, alloc, down*...), nodes

# What Slurm itself writes in each column; a row that does not match is dropped and logged.
_JOB = r"(?P<job>[0-9]+(?:_(?:[0-9]+|\[[0-9,%-]+\]))?(?:\+[0-9]+)?)"
JOB_ID = re.compile(_JOB + r"\Z")
_STEP_ID = re.compile(_JOB + r"(?:\.(?:[0-9]+|batch|extern|interactive)(?:\+[0-9]+)?)?\Z")
UID = re.compile(r"[0-9]{1,10}\Z")
STATE = re.compile(r"[A-Z][A-Z_]*\+?(?: by [0-9]+)?\Z")
WORD = re.compile(r"[^\s\x00-\x1f\x7f]*\Z")  # user names, partitions, node lists
_LINE = re.compile(r"[^\x00-\x1f\x7f]*\Z")  # one line of printable text: reasons
_COUNT = re.compile(r"(?:[0-9]+|N/A)?\Z")
_DURATION = re.compile(r"(?:(?:[0-9]+-)?[0-9]+(?::[0-9]+){0,2}|INVALID|UNLIMITED|N/A)?\Z")
_EXIT = re.compile(r"(?:[0-9]+(?::[0-9]+)?|N/A)?\Z")
_NODE_STATE = re.compile(r"[a-z_]+[*~#!%$@^-]*\Z")

_DELIMITER = re.compile("\x1f[0-9a-f]{16}\x1f")

_UNAVAILABLE = re.compile(
    r"Unable to contact slurm controller|Socket timed out|Zero Bytes were transmitted"
    r"|Connection refused|Problem talking to the database|slurm_persist_conn_open"
    r"|Transport endpoint is not connected|Communication connection failure"
    r"|backup controller in standby mode|Slurm temporarily unable",
    re.IGNORECASE,
)
_PERMISSION = re.compile(r"Access/permission denied|Permission denied|not the owner", re.I)
_INVALID_JOB = re.compile(r"Invalid job id specified", re.I)
# the client tools' own refusal of an id no job can have ("Invalid job id: 0")
_IMPOSSIBLE_JOB = re.compile(r"Invalid job id: |Bad job array element specified", re.I)
_UNREADABLE_SCRIPT = re.compile(r"Unable to open file (.*)", re.I)
_SUBMITTED = re.compile(r"^\s*(\d+)(?:;\S*)?\s*$", re.M)
_DBD_QUEUE = re.compile(r"^\s*DBD Agent queue size:\s*([0-9]+)\s*$", re.M)


def _message(result: Completed) -> str:
    text = " ".join(line.strip() for line in result.stderr.splitlines() if line.strip())
    return text or f"{result.argv[0]} exited with status {result.returncode}"


def new_delimiter() -> str:
    """A field delimiter for one call: nobody can put it in a job name without knowing it.

    It starts with a non-digit so that squeue's ``--Format=Field:<suffix>`` does not read
    it as a field width.
    """
    return f"\x1f{secrets.token_hex(8)}\x1f"


def _delimiter_of(result: Completed) -> str:
    """The delimiter the call that printed ``result`` was given (it is in its argv)."""
    for argument in result.argv:
        found = _DELIMITER.search(argument)
        if found is not None:
            return found.group()
    raise ValueError(f"{result.argv[0]} was not run with a delimiter of this module")


def listing_rows(result: Completed, width: int) -> Iterator[list[str]]:
    """The rows of a listing printed with a per-call delimiter after every field.

    The output is ``f1 D f2 D ... fN D \\n f1 D ...``: split on the delimiter alone, each
    row is exactly ``width`` cells and the first cell of every row but the first starts
    with the newline that ended the row before. Newlines, separators and anything else
    inside a cell (a job name) stay in that cell.
    """
    if not result.stdout:
        return
    delimiter = _delimiter_of(result)
    cells = result.stdout.split(delimiter)
    tail = cells.pop()
    if tail.strip():
        log.warning("%s: ignoring trailing text %r", result.argv[0], tail[:200])
    if len(cells) % width:
        log.warning(
            "%s printed %d fields, not rows of %d: some rows will not validate",
            result.argv[0],
            len(cells),
            width,
        )
    for start in range(0, len(cells) - width + 1, width):
        row = cells[start : start + width]
        if start:
            if not row[0].startswith("\n"):
                log.warning("%s: a row does not start a line: %r", result.argv[0], row[0][:200])
                continue
            row[0] = row[0][1:]
        yield row


def _valid(row: list[str], checks: tuple[re.Pattern[str] | None, ...]) -> bool:
    """Whether every cell of ``row`` matches its check (None: free text, unchecked)."""
    return all(check is None or check.match(cell) for cell, check in zip(row, checks, strict=True))


class _Checks:
    """:func:`_valid` for the rows of one long listing, checking each distinct cell once:
    100,000 queued jobs have few distinct users, states, partitions or reasons."""

    REMEMBERED = 4096  # distinct passing values kept per column (job ids are all distinct)

    def __init__(self, checks: tuple[re.Pattern[str] | None, ...]) -> None:
        self.checks = checks
        self.passed: list[set[str]] = [set() for _ in checks]

    def __call__(self, row: list[str]) -> bool:
        for cell, check, passed in zip(row, self.checks, self.passed, strict=True):
            if check is None or cell in passed:
                continue
            if not check.match(cell):
                return False
            if len(passed) < self.REMEMBERED:
                passed.add(cell)
        return True


_QUEUE_CHECKS = (
    JOB_ID, UID, WORD, STATE, WORD, _DURATION, _COUNT, _COUNT, _LINE, _EXIT, None
)  # fmt: skip
_HISTORY_JOB_CHECKS = (
    _STEP_ID, UID, WORD, STATE, WORD, _DURATION, _COUNT, _COUNT, _LINE, _EXIT, None
)  # fmt: skip
_EMPTY = re.compile(r"\Z")
_HISTORY_STEP_CHECKS = (
    _STEP_ID, _EMPTY, _EMPTY, STATE, WORD, _DURATION, _COUNT, _COUNT, _LINE, _EXIT, None
)  # fmt: skip


def log_dropped(result: Completed, row: list[str]) -> None:
    log.warning(
        "dropping a %s row that does not validate: %r", result.argv[0], [c[:100] for c in row]
    )


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


def job_row(jobid: str, rows: list[JobRecord]) -> JobRecord | None:
    """The row of job ``jobid`` among ``rows``: its own, else, for the id sbatch printed,
    the leader ``<id>+0`` of a heterogeneous job or the first task ``<id>_<n>`` of an
    array. Steps (``<id>.batch``) are never the job's row."""
    exact = next((row for row in rows if row.id == jobid), None)
    if exact is not None or not jobid.isdigit():
        return exact
    leader = next((row for row in rows if row.id == f"{jobid}+0"), None)
    if leader is not None:
        return leader
    return next(
        (row for row in rows if JOB_ID.match(row.id) and row.id.startswith(f"{jobid}_")), None
    )


def _first_of_each(result: Completed, records: Iterator[JobRecord]) -> list[JobRecord]:
    """``records`` without repeated ids: one output names each job once, so a repeat
    can only be a forged row; the first is kept and the repeat logged."""
    seen: set[str] = set()
    kept = []
    for record in records:
        if record.id in seen:
            log.warning("%s listed job %s twice; keeping the first", result.argv[0], record.id)
            continue
        seen.add(record.id)
        kept.append(record)
    return kept


def _job_of(jobid: str) -> str:
    """The job part of a validated job or step id: ``123_4`` of ``123_4.batch``."""
    found = _STEP_ID.match(jobid)
    return found.group("job") if found else jobid


def _job_base(jobid: str) -> str:
    """The id sbatch printed for a validated job id: ``123`` of ``123_4`` or ``123+1``."""
    digits = re.match(r"[0-9]+", jobid)
    return digits.group() if digits else jobid


def _accounting_record(fixed: list[str], name: str, owners: Mapping[str, int]) -> JobRecord | None:
    """One sacct row in :data:`_HISTORY_FIELDS` order (``fixed``: every cell but the
    name, stripped) as a record, or None when it does not validate. A step's owner is
    its job's, from ``owners`` (sacct leaves a step's uid empty)."""
    step = _STEP_ID.match(fixed[0])
    is_job = JOB_ID.match(fixed[0]) is not None
    checks = _HISTORY_JOB_CHECKS if is_job else _HISTORY_STEP_CHECKS
    if step is None or not _valid([*fixed, name], checks):
        return None
    jobid, uid, user, state, partition, elapsed, nodes, tasks, nodelist, code = fixed
    return classified(
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
            uid=int(uid) if is_job else owners.get(step.group("job")),
        )
    )


class Slurm(Scheduler):
    """Slurm through its command-line tools (22.05 and later)."""

    @classmethod
    def from_config(cls, name: str, machine: MachineConfig) -> Slurm:
        """Slurm for ``machines.<name>``: ``commands`` renames its tools; ``options.submit``
        is ``"sbatch"`` (the default) or ``"rpc"``: sbatch's request sent through libslurm
        from the user's helper (``runner = "local-helper"``), see
        :mod:`hpcgate.schedulers.slurm_rpc`."""
        submit = machine.options.get("submit", "sbatch")
        if submit not in SUBMIT_PATHS:
            raise ConfigError(
                f"machines.{name}.options.submit: {submit!r} is not one of "
                f"{', '.join(map(repr, SUBMIT_PATHS))}"
            )
        if submit == "rpc" and not slurm_rpc.library_installed():
            raise ConfigError(
                f"machines.{name}.options.submit = 'rpc' needs Slurm 22.05's "
                f"{slurm_rpc.LIBRARY} (Debian: libslurm38) on this host; "
                "install it or drop the option (sbatch is used)"
            )
        try:
            return cls(machine.commands, submit_rpc=submit == "rpc")
        except ValueError as exc:
            raise ConfigError(f"machines.{name}.commands: {exc}") from None

    def __init__(
        self, commands: Mapping[str, str] | None = None, *, submit_rpc: bool = False
    ) -> None:
        commands = dict(commands or {})
        unknown = set(commands) - set(COMMANDS)
        if unknown:
            raise ValueError(
                f"unknown Slurm command {sorted(unknown)[0]!r}; renamable: {', '.join(COMMANDS)}"
            )
        self.commands = {name: commands.get(name, name) for name in COMMANDS}
        self.submit_rpc = submit_rpc

    def stand_ins(self) -> Mapping[str, str]:
        if not self.submit_rpc:
            return {}
        return {self.commands["sbatch"]: slurm_rpc.__file__}

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
        if options.tag is not None:
            argv.append(f"--comment={options.tag}")  # overrides any #SBATCH --comment
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
        delimiter = new_delimiter()
        fmt = ",".join(f"{field}:{delimiter}" for field in _QUEUE_FIELDS)
        return [self.commands["squeue"], "--noheader", *selection, f"--Format={fmt}"]

    def queue_argv(self, user: str) -> list[str]:
        return self._squeue(f"--user={user}")

    def all_jobs_argv(self) -> list[str]:
        return self._squeue("--all")

    def nodes_argv(self) -> list[str]:
        # one row per (partition, state) with its node count; %R is the partition name
        # without the default marker, %t the compact state (idle, alloc, mix, down*, ...)
        delimiter = new_delimiter()
        fmt = "".join(f"{field}{delimiter}" for field in _NODES_FIELDS)
        return [self.commands["sinfo"], "--noheader", f"--format={fmt}"]

    def parse_nodes(self, result: Completed) -> dict[str, dict[str, int]]:
        if not result.ok:
            raise self.error_for(result)
        partitions: dict[str, dict[str, int]] = {}
        for row in listing_rows(result, len(_NODES_FIELDS)):
            partition, state, count = (cell.strip() for cell in row)
            if not (partition and WORD.match(partition) and _NODE_STATE.match(state)):
                log_dropped(result, row)
                continue
            if not count.isdigit():
                log_dropped(result, row)
                continue
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
        return _first_of_each(result, self._queue_records(result))

    def _queue_records(self, result: Completed) -> Iterator[JobRecord]:
        valid = _Checks(_QUEUE_CHECKS)
        for row in listing_rows(result, len(_QUEUE_FIELDS)):
            *fixed, name = row  # the name exactly as Slurm stores it
            fixed = [cell.strip() for cell in fixed]
            if not valid([*fixed, name]):
                log_dropped(result, row)
                continue
            jobid, uid, user, state, partition, used, nodes, tasks, reason, status = fixed
            phase, code = classes_of(state)
            yield JobRecord(
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
                phase=phase,
                code=code,
                uid=int(uid),
            )

    # accounting

    def history_argv(self, jobid: str) -> list[str]:
        return [
            self.commands["sacct"],
            "--noheader",
            "--parsable",  # a delimiter after every field, the last one too
            f"--delimiter={new_delimiter()}",
            "--allusers",
            f"--jobs={jobid}",
            f"--format={','.join(_HISTORY_FIELDS)}",
        ]

    def parse_history(self, result: Completed) -> list[JobRecord]:
        if not result.ok:
            raise self.error_for(result)
        return _first_of_each(result, self._history_records(result))

    def _history_records(self, result: Completed) -> Iterator[JobRecord]:
        owners: dict[str, int] = {}  # job id -> uid, for its steps (sacct leaves theirs empty)
        for row in listing_rows(result, len(_HISTORY_FIELDS)):
            *fixed, name = row
            record = _accounting_record([cell.strip() for cell in fixed], name, owners)
            if record is None:
                log_dropped(result, row)
                continue
            if record.uid is not None and JOB_ID.match(record.id):
                owners.setdefault(record.id, record.uid)
            yield record

    def accounting_lag_argv(self) -> list[str] | None:
        # sdiag (any user may run it) prints how many records slurmctld holds for
        # slurmdbd: more than none while slurmdbd is away or catching up after a restart.
        return [self.commands["sdiag"]]

    def parse_accounting_lag(self, result: Completed) -> bool:
        if not result.ok:
            if _PERMISSION.search(_message(result)):
                log.warning(
                    "%s is refused here: cannot tell whether accounting lags", result.argv[0]
                )
                return False
            raise self.error_for(result)
        queued = _DBD_QUEUE.search(result.stdout)
        # no such line: the controller sends nothing to a slurmdbd (no accounting to lag)
        return queued is not None and int(queued.group(1)) > 0

    def merge_job_views(
        self, jobid: str, live: JobRecord | None, history: list[JobRecord]
    ) -> list[JobRecord]:
        # Accounting lags the controller: for seconds after a job starts it shows a
        # placeholder row ("allocation", no partition, a stale state), and a pending job
        # may not be there at all. While the controller still knows the job, its row is
        # the truth; accounting adds the steps.
        recorded = job_row(jobid if live is None else live.id, history)
        if live is not None:
            job = replace(live, elapsed=_hms(live.elapsed), tasks=None)
            ran_on = recorded.nodelist if recorded is not None else ""
            if live.nodelist.startswith("(") and ran_on and ran_on != "None assigned":
                job = replace(job, nodelist=ran_on)  # a finished job's reason -> its nodes
        elif recorded is not None:
            job = recorded
        else:
            return []
        steps = [row for row in history if row.id.startswith(f"{job.id}.")]
        return [job, *steps]

    def find_job(self, jobid: str, rows: list[JobRecord]) -> JobRecord | None:
        return job_row(jobid, rows)

    def history_is_final(self, jobid: str, history: list[JobRecord]) -> bool:
        # The placeholder row of a job accounting has not synced yet has no partition,
        # and may already say COMPLETED under the name "allocation".
        job = job_row(jobid, history)
        return job is not None and job.finished and bool(job.partition)

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
        if _IMPOSSIBLE_JOB.search(message):
            return BadRequest(f"Slurm cannot have such a job id: {message}")
        return Unavailable(f"the scheduler failed: {message}")

    # jobs by tag: the tag is the job's comment

    def tagged_jobs_argvs(
        self, user: str, within: float, jobid: str | None = None
    ) -> list[list[str]]:
        # The controller knows queued jobs and those that ended in the last MinJobAge;
        # accounting knows the rest, but keeps comments only with
        # AccountingStoreFlags=job_comment in slurm.conf. The comment is the user's to
        # write: like every listing, a delimiter made for the call, the comment last.
        one = [f"--jobs={jobid}"] if jobid is not None else []
        delimiter = new_delimiter()
        return [
            [
                self.commands["squeue"],
                "--noheader",
                "--states=all",
                f"--user={user}",
                *one,
                f"--Format=JobID:{delimiter},Comment:{delimiter}",
            ],
            [
                self.commands["sacct"],
                "--noheader",
                "--parsable",  # a delimiter after every field, the last one too
                f"--delimiter={new_delimiter()}",
                "--allocations",
                f"--user={user}",
                f"--starttime=now-{int(within) + 60}",
                *one,
                "--format=JobID,Comment",
            ],
        ]

    def parse_tagged_jobs(self, result: Completed, tag: str) -> list[str]:
        if not result.ok:
            if _INVALID_JOB.search(result.stderr):
                return []
            raise self.error_for(result)
        found: list[str] = []
        for row in listing_rows(result, 2):
            jobid, comment = row[0].strip(), row[1]
            if not JOB_ID.match(jobid):
                log_dropped(result, row)
                continue
            base = _job_base(jobid)  # an array's tasks and a het job's parts: one submit
            if comment == tag and base not in found:
                found.append(base)
        return found

    def submitted_nothing(self, result: Completed) -> bool:
        # sbatch says "(connect failure)" when it could not open a connection to any
        # controller: no request was sent. A timeout or a lost answer may have submitted.
        return not result.ok and bool(_NOT_CONNECTED.search(result.stderr))

    # jobs that ended: one accounting call per monitor interval, for every user

    _ENDED_FIELDS = (*_HISTORY_FIELDS[:-1], "End", "Reason", "JobName")
    _END = re.compile(r"(?:[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}|Unknown|None)?\Z")
    _ENDED_STATES = "BF,CA,CD,DL,F,NF,OOM,PR,RV,TO"

    def ended_jobs_argv(self, since: float) -> list[str] | None:
        # Jobs in a final state at some time in [since, now]: those that ended in it.
        # Times are the controller host's local time, as sacct reads them.
        start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since))
        return [
            self.commands["sacct"],
            "--noheader",
            "--parsable",
            f"--delimiter={new_delimiter()}",
            "--allusers",
            f"--starttime={start}",
            "--endtime=now",
            f"--state={self._ENDED_STATES}",
            f"--format={','.join(self._ENDED_FIELDS)}",
        ]

    def parse_ended_jobs(self, result: Completed) -> list[Ending]:
        return self.parse_ended_jobs_except(result, ())

    def parse_ended_jobs_except(self, result: Completed, settled: Container[str]) -> list[Ending]:
        if type(self).parse_ended_jobs is not Slurm.parse_ended_jobs:  # a subclass's parser
            return super().parse_ended_jobs_except(result, settled)
        if not result.ok:
            raise self.error_for(result)
        history: dict[str, list[JobRecord]] = {}  # job id -> its row, then its steps
        ends: dict[str, tuple[float | None, str]] = {}
        owners: dict[str, int] = {}
        for row in listing_rows(result, len(self._ENDED_FIELDS)):
            if settled and row[0].strip().partition(".")[0] in settled:
                continue  # read again only for accounting's lag: each probe overlaps
            *fixed, name = row
            *recorded, end, reason = (cell.strip() for cell in fixed)
            record = _accounting_record(recorded, name, owners)
            if record is None or not self._END.match(end) or not _LINE.match(reason):
                log_dropped(result, row)
                continue
            if JOB_ID.match(record.id) and record.uid is not None:
                if record.id in owners:
                    log.warning(
                        "%s listed job %s twice; keeping the first", result.argv[0], record.id
                    )
                    continue
                owners[record.id] = record.uid
                ends[record.id] = (_epoch(end), "" if reason == "None" else reason)
            history.setdefault(_job_of(record.id), []).append(record)
        endings = []
        for jobid, (ended, reason) in ends.items():
            rows = history.get(jobid, [])
            if not self.history_is_final(jobid, rows):
                continue
            rows = self.merge_job_views(jobid, None, rows)
            if rows:
                endings.append(Ending(rows=rows, ended=ended, reason=reason))
        return endings

    # where a job writes its output: squeue's patterns, expanded as slurmstepd does

    def output_paths_argv(self, jobid: str, *others: str) -> list[str] | None:

        return output_argv(self, jobid, *others)

    def parse_output_paths(self, jobid: str, result: Completed) -> OutputPaths | None:

        return output_paths(self, [jobid], result)[jobid]

    def parse_output_paths_of(
        self, jobids: Sequence[str], result: Completed
    ) -> dict[str, OutputPaths | None]:
        return output_paths(self, jobids, result)


def _epoch(text: str) -> float | None:
    """sacct's local ``YYYY-MM-DDTHH:MM:SS`` as epoch seconds (None when unknown)."""
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


_NOT_CONNECTED = re.compile(r"Unable to contact slurm controller \(connect failure\)", re.I)


# -- where a job writes its output ------------------------------------------------------
#
# Where a Slurm job writes its output: read from the controller, expanded as Slurm does.
#
# ``squeue --Format=StdOut,StdErr`` prints the paths as the user gave them (``-o
# out-%j-%x.txt``), before slurmstepd expands them on the node. The job name, the paths and
# the working directory are the user's to write, with any character, so the listing is
# printed with a delimiter made for that one call after every field (as every listing of
# :mod:`hpcgate.schedulers.slurm`), each row is validated, and ownership is read from the
# numeric uid. The patterns are then expanded here with Slurm's rules (``man sbatch``,
# "filename pattern"), and the values the controller gave.
#

_OUTPUT_FIELDS = (
    "JobID",
    "JobArrayID",
    "ArrayJobID",
    "ArrayTaskID",
    "UserID",
    "UserName",
    "State",
    "BatchHost",
    "WorkDir",
    "StdOut",
    "StdErr",
    "Name",
)
_TASK = re.compile(r"(?:[0-9]+|N/A|[0-9,%\[\]-]+)?\Z")
_PATH = re.compile(r"[^\x00]*\Z")
_CHECKS = (
    JOB_ID, JOB_ID, JOB_ID, _TASK, UID, WORD, STATE, WORD, _PATH, _PATH, _PATH, None
)  # fmt: skip
NO_ARRAY_TASK = "4294967294"  # what slurmstepd writes for %a outside an array (NO_VAL)
_PATTERN = re.compile(r"%(\d*)([%AaJjNnstux])")


@dataclass(frozen=True)
class OutputRow:
    """A job as the controller knows it, with its output patterns as given."""

    jobid: str
    array_id: str
    array_job: str
    array_task: str
    uid: int
    user: str
    state: str
    host: str
    workdir: str
    stdout: str
    stderr: str
    name: str

    @property
    def ended(self) -> bool:
        return phase_of(self.state) == Phase.FINISHED

    def expand(self, pattern: str) -> str:
        """``pattern`` as slurmstepd writes it for the batch step (``%N``: the batch host)."""
        path = pattern or "slurm-%j.out"
        # Slurm: a backslash anywhere turns off every replacement
        literal = "\\" in path
        path = path.replace("\\", "") if literal else _PATTERN.sub(self._replace, path)
        return posixpath.join(self.workdir or "/", path)

    def _replace(self, found: re.Match[str]) -> str:
        width, letter = found.groups()
        task = self.array_task if self.array_task.isdigit() else NO_ARRAY_TASK
        values = {
            "%": "%",
            "A": self.array_job or self.jobid,
            "a": task,
            "J": self.jobid,
            "j": self.jobid,
            "N": self.host.split(".")[0],
            "n": "0",
            "s": "batch",
            "t": "0",
            "u": self.user,
            "x": self.name,
        }
        value = values[letter]
        if letter == "%":
            return value
        return value.zfill(int(width)) if width and value.isdigit() else value

    @property
    def complete(self) -> bool:
        """Whether the paths can be expanded for good: ``%N`` needs the batch host, and
        the tasks of an array still pending as one row (``123_[1-9]``) have no task id."""
        if "[" in self.array_id:
            return False
        needs_host = (
            "%N" in self.stdout
            or "%N" in self.stderr
            or re.search(r"%\d+N", self.stdout + self.stderr)
        )
        return not needs_host or self.host not in ("", "n/a", "(null)")


def output_argv(slurm: Slurm, jobid: str, *others: str) -> list[str]:
    """squeue of jobs (any state the controller still knows) with their output paths."""
    delimiter = new_delimiter()
    fmt = ",".join(f"{field}:{delimiter}" for field in _OUTPUT_FIELDS)
    squeue = slurm.commands["squeue"]
    jobs = ",".join((jobid, *others))
    return [squeue, "--noheader", "--states=all", f"--jobs={jobs}", f"--Format={fmt}"]


def parse_output_rows(result: Completed) -> list[OutputRow]:
    """The validated rows of :func:`output_argv`'s listing (an unknown job: none)."""
    if not result.ok:
        return []
    rows = []
    for row in listing_rows(result, len(_OUTPUT_FIELDS)):
        *fixed, name = row
        # with a delimiter after every field no cell is padded; paths are kept exactly
        cells = [cell.strip() for cell in fixed[:8]] + fixed[8:]
        if not all(
            check is None or check.match(cell)
            for cell, check in zip([*cells, name], _CHECKS, strict=True)
        ):
            log_dropped(result, row)
            continue
        jobid, array_id, array_job, task, uid, user, state, host, workdir, out, err = cells
        rows.append(
            OutputRow(
                jobid=jobid,
                array_id=array_id,
                array_job=array_job,
                array_task=task,
                uid=int(uid),
                user=user,
                state=state,
                host=host,
                workdir=workdir,
                stdout=out,
                stderr=err or out,
                name=name,
            )
        )
    return rows


def row_of(jobid: str, rows: list[OutputRow]) -> OutputRow | None:
    """The row of ``jobid``: its own (``123``, ``123_4``, ``123+1``; a het job's leader
    lists under its own id), else the first of its array (``123`` asked, its tasks
    listed); never another job's, when several were asked."""
    for row in rows:
        if jobid in (row.jobid, row.array_id):
            return row
    return next((row for row in rows if row.array_job == jobid), None)


_UNKNOWN_JOB = re.compile(r"Invalid job id", re.I)


def output_paths(
    slurm: Slurm, jobids: Sequence[str], result: Completed
) -> dict[str, OutputPaths | None]:
    """What :meth:`Slurm.parse_output_paths_of` answers: the expanded paths of each of
    ``jobids``, None for a job the controller does not know; a failed call raises its
    error. The listing is parsed once, however many jobs were asked."""
    if not result.ok and not _UNKNOWN_JOB.search(result.stderr):
        raise slurm.error_for(result)
    rows = parse_output_rows(result)
    return {jobid: _expanded(row_of(jobid, rows)) for jobid in jobids}


def _expanded(row: OutputRow | None) -> OutputPaths | None:
    if row is None:
        return None
    return OutputPaths(
        uid=row.uid,
        user=row.user,
        stdout=row.expand(row.stdout),
        stderr=row.expand(row.stderr),
        complete=row.complete,
        ended=row.ended,
    )
