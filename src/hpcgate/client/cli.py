"""The user commands of ``hpcgate``: login, run, submit, queue, show, cancel, wait, status,
and for files and job output ls, get, put, cat, rm, mkdir, logs.

The gateway's URL comes from ``--url``, else ``$HPCGATE_URL``, else the file written by
``hpcgate login`` (``$XDG_CONFIG_HOME/hpcgate/client.json``, mode 0600), which also keeps
the session token. Exit codes: 0 success; 1 the gateway refused or failed (its message on
stderr); 2 bad usage; 3 ``wait``: the job ended without success; 4 ``wait`` timed out;
``run`` exits with the remote command's own code.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcgate.client import Client, GatewayError, Job, NotLoggedIn, WaitTimedOut

EXIT_ERROR, EXIT_USAGE, EXIT_JOB_FAILED, EXIT_WAIT_TIMEOUT = 1, 2, 3, 4


class UsageError(Exception):
    pass


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "hpcgate" / "client.json"


def load_settings() -> dict[str, str]:
    try:
        data = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)}


def save_settings(settings: dict[str, str]) -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(settings, file)
    os.chmod(path, 0o600)  # also when the file existed with looser bits


def _url(args: argparse.Namespace, settings: dict[str, str]) -> str:
    url = args.url or os.environ.get("HPCGATE_URL") or settings.get("url")
    if not url:
        raise UsageError("no gateway URL: give --url, set HPCGATE_URL, or run hpcgate login --url")
    return str(url)


def _client(args: argparse.Namespace) -> Client:
    settings = load_settings()
    url = _url(args, settings)
    token = settings.get("token") if settings.get("url") == url else None
    return Client(url, token=token, retries=2)


def _emit(args: argparse.Namespace, data: Any, human: Callable[[], None]) -> None:
    if args.json:
        print(json.dumps(data, default=str, indent=2))
    else:
        human()


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if cell is None else str(cell) for cell in row))
    # piped output is not cut to 80 columns: cells stay whole for grep and logs
    Console(width=None if sys.stdout.isatty() else 200).print(table)


# -- commands ---------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace) -> int:
    settings = load_settings()
    url = _url(args, settings)
    username = args.username or os.environ.get("USER") or ""
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {username} at {url}: ")
    else:  # e.g. printf '%s\n' "$PW" | hpcgate login alice: never on the command line
        password = sys.stdin.readline().rstrip("\n")
    with Client(url) as client:
        token = client.login(username, password)
    save_settings({"url": url, "token": token})
    print(f"logged in as {username} at {url}")
    return 0


def cmd_logout(args: argparse.Namespace) -> int:
    settings = load_settings()
    with _client(args) as client:
        if client.token:
            client.logout()  # the gateway answers OK for an expired token too
    settings.pop("token", None)
    if settings:
        save_settings(settings)
    print("logged out")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if not args.command:
        raise UsageError("give the command after --, e.g. hpcgate run ln3 -- ls -l")
    with _client(args) as client:
        result = client.run(args.machine, " ".join(args.command))
    if args.json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
    else:
        sys.stdout.write(result.output)
        sys.stderr.write(result.error)
    return result.retcode


def cmd_submit(args: argparse.Namespace) -> int:
    options = {
        "name": args.name,
        "time": args.time,
        "partition": args.partition,
        "cores": args.cores,
        "mem_gb": args.mem_gb,
        "nodes": args.nodes,
        "workdir": args.workdir,
        "args": args.args,
    }
    with _client(args) as client:
        if args.remote:
            jobid = client.submit(args.machine, remote_file=args.script, **options)
        else:
            try:
                script = Path(args.script).read_text()
            except OSError as exc:
                raise UsageError(f"cannot read {args.script}: {exc.strerror}") from None
            jobid = client.submit(args.machine, script=script, path=args.path, **options)
    _emit(args, {"jobid": jobid}, lambda: print(jobid))
    return 0


def _job_row(job: Job) -> list[Any]:
    return [job.id, job.name, job.state, job.partition, job.nodes, job.elapsed, job.nodelist]


def cmd_queue(args: argparse.Namespace) -> int:
    with _client(args) as client:
        jobs = client.queue(args.machine)
    _emit(
        args,
        [dataclasses.asdict(job) for job in jobs],
        lambda: _table(
            f"{len(jobs)} job(s) on {args.machine}",
            ["id", "name", "state", "partition", "nodes", "time", "nodelist / reason"],
            [_job_row(job) for job in jobs],
        ),
    )
    return 0


def _show(job: Job, title: str) -> None:
    rows = [
        [
            job.id,
            job.name,
            job.state,
            job.partition,
            job.nodes,
            "",
            job.elapsed,
            job.exit_code,
            job.nodelist,
        ]
    ]
    rows += [
        [s.id, s.name, s.state, "", s.nodes, s.tasks, s.elapsed, s.exit_code, s.nodelist]
        for s in job.steps
    ]
    _table(
        title,
        ["id", "name", "state", "partition", "nodes", "tasks", "time", "exit", "nodelist"],
        rows,
    )


def cmd_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.job(args.machine, args.jobid)
    _emit(args, dataclasses.asdict(job), lambda: _show(job, f"job {job.id} on {args.machine}"))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.cancel(args.machine, args.jobid)
    _emit(args, {"cancelled": args.jobid}, lambda: print(f"cancelled {args.jobid}"))
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            job = client.wait(args.machine, args.jobid, timeout=args.timeout)
        except WaitTimedOut as exc:
            print(f"hpcgate: {exc.message}", file=sys.stderr)
            return EXIT_WAIT_TIMEOUT
    _emit(
        args,
        dataclasses.asdict(job),
        lambda: print(f"job {job.id}: {job.state}, exit code {job.exit_code or '?'}"),
    )
    return 0 if job.succeeded else EXIT_JOB_FAILED


def cmd_watch(args: argparse.Namespace) -> int:
    types = [kind for kind in (args.type or "").split(",") if kind]
    with _client(args) as client:
        try:
            for event in client.events(args.machine, args.jobid, types=types, after=args.after):
                if args.json:
                    print(json.dumps({"id": event.id, "type": event.type, "data": event.data}))
                else:
                    code = "" if event.exit_code is None else f" exit {event.exit_code}"
                    print(
                        f"{event.time} {event.machine}/{event.jobid} {event.kind}"
                        f" ({event.previous_state or '-'} -> {event.state or '?'}){code}"
                        f"  [{event.id}]"
                    )
                sys.stdout.flush()
                if args.jobid and event.final:
                    return 0
        except KeyboardInterrupt:
            return 0
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        machines = client.status()

    def human() -> None:
        _table(
            "machines",
            ["machine", "queue", "nodes", "health", "probe (s)", "updated", "stale"],
            [
                [
                    m.name,
                    " ".join(f"{k}={v}" for k, v in sorted(m.queue.items())),
                    "; ".join(
                        f"{p}: " + " ".join(f"{s}={n}" for s, n in sorted(states.items()))
                        for p, states in m.partitions.items()
                    ),
                    m.health,
                    m.probe_seconds,
                    m.updated.strftime("%H:%M:%S") if m.updated else "never",
                    ("STALE " + m.error).strip() if m.stale else m.error,
                ]
                for m in machines
            ],
        )

    _emit(args, [dataclasses.asdict(m) for m in machines], human)
    return 0


# -- parsers ----------------------------------------------------------------------------


# -- files and job output -------------------------------------------------------------------


def _progress(args: argparse.Namespace, what: str) -> Any:
    """A rich progress bar on a terminal (not with --json), else None."""
    if args.json or not sys.stderr.isatty():
        return None
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        f"[bold]{what}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=True,
        console=Console(stderr=True),
    )


def _transfer(args: argparse.Namespace, what: str, move: Callable[[Any], int]) -> int:
    bar = _progress(args, what)
    if bar is None:
        return move(None)
    with bar:
        task = bar.add_task(what, total=None)
        return move(lambda done, total: bar.update(task, completed=done, total=total))


def cmd_ls(args: argparse.Namespace) -> int:
    with _client(args) as client:
        entries = client.list(args.machine, args.path)

    def human() -> None:
        rows = [
            [
                e.perms,
                e.user,
                e.group,
                e.size,
                e.date,
                e.name + (f" -> {e.symlink}" if e.symlink else ""),
            ]
            for e in entries
        ]
        _table(
            f"{args.machine}:{args.path}", ["perms", "user", "group", "size", "date", "name"], rows
        )

    _emit(args, [dataclasses.asdict(entry) for entry in entries], human)
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    local = Path(args.local or args.remote.rstrip("/").rsplit("/", 1)[-1])
    if local.is_dir():
        local = local / args.remote.rstrip("/").rsplit("/", 1)[-1]
    with _client(args) as client:
        size = _transfer(
            args,
            local.name,
            lambda progress: client.download(args.machine, args.remote, local, progress=progress),
        )
    _emit(args, {"path": str(local), "size": size}, lambda: print(f"{local}: {size} bytes"))
    return 0


def cmd_put(args: argparse.Namespace) -> int:
    local = Path(args.local)
    if not local.is_file():
        raise UsageError(f"{local} is not a file")
    remote = args.remote + local.name if args.remote.endswith("/") else args.remote
    with _client(args) as client:
        size = _transfer(
            args,
            local.name,
            lambda progress: client.upload(
                args.machine, local, remote, overwrite=not args.no_clobber, progress=progress
            ),
        )
    _emit(args, {"location": remote, "size": size}, lambda: print(f"{remote}: {size} bytes"))
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for block in client.read(args.machine, args.path):
            sys.stdout.buffer.write(block)
    sys.stdout.buffer.flush()
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.remove(args.machine, args.path, recursive=args.recursive)
    _emit(args, {"removed": args.path}, lambda: None)
    return 0


def cmd_mkdir(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.mkdir(args.machine, args.path, parents=args.parents)
    _emit(args, {"made": args.path}, lambda: None)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    stream = "stderr" if args.stderr else "stdout"
    with _client(args) as client:
        if args.follow:
            for text in client.follow_output(args.machine, args.jobid, stream=stream):
                if args.json:
                    print(json.dumps({"data": text}), flush=True)
                else:
                    sys.stdout.write(text)
                    sys.stdout.flush()
            return 0
        offset = 0
        while True:
            chunk = client.job_output(args.machine, args.jobid, stream=stream, offset=offset)
            if args.json:
                print(json.dumps(dataclasses.asdict(chunk)))
            else:
                sys.stdout.write(chunk.data)
            if chunk.next_offset >= chunk.size or chunk.next_offset == offset:
                return 0
            offset = chunk.next_offset


def _common(parser: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    parser.add_argument("--url", help="gateway URL (default: $HPCGATE_URL or the login's)")
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the user commands to the ``hpcgate`` parser."""

    def add(
        name: str,
        handler: Callable[[argparse.Namespace], int],
        help: str,
        example: str,
        *,
        json_flag: bool = True,
    ) -> argparse.ArgumentParser:
        parser = commands.add_parser(
            name,
            help=help,
            description=help[0].upper() + help[1:] + ".",
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        _common(parser, json_flag=json_flag)
        parser.set_defaults(handler=lambda args: _guard(handler, args))
        return parser

    login = add(
        "login",
        cmd_login,
        "log in to a gateway and keep the session token",
        "hpcgate login --url https://gateway.example.org alice",
        json_flag=False,
    )
    login.add_argument("username", nargs="?", help="default: $USER")
    add("logout", cmd_logout, "end the session", "hpcgate logout", json_flag=False)

    run = add(
        "run",
        cmd_run,
        "run a command line on a machine, as you",
        "hpcgate run ln3 -- ls -l '~/project'",
    )
    run.add_argument("machine")
    run.add_argument("command", nargs=argparse.REMAINDER, help="after --: the command line")

    submit = add(
        "submit",
        cmd_submit,
        "submit a batch script from this computer (or --remote)",
        "hpcgate submit ln3 job.sh --name hello --time 10 --partition work",
    )
    submit.add_argument("machine")
    submit.add_argument("script", help="a local script file (with --remote: a path on the machine)")
    submit.add_argument("--remote", action="store_true", help="SCRIPT is already on the machine")
    submit.add_argument("--path", help="where to write the script on the machine (default ~/newt/)")
    submit.add_argument("--name", help="job name")
    submit.add_argument("--time", type=int, metavar="MINUTES", help="time limit")
    submit.add_argument("--partition")
    submit.add_argument("--cores", type=int, help="number of cores (tasks)")
    submit.add_argument("--mem-gb", type=float, help="memory per node, GB")
    submit.add_argument("--nodes", type=int)
    submit.add_argument("--workdir", help="working directory on the machine")
    submit.add_argument("--args", help="arguments for the script, as one string")

    queue = add("queue", cmd_queue, "list your jobs still queued or running", "hpcgate queue ln3")
    queue.add_argument("machine")
    show = add("show", cmd_show, "show one of your jobs with its steps", "hpcgate show ln3 4816214")
    show.add_argument("machine")
    show.add_argument("jobid")
    cancel = add("cancel", cmd_cancel, "kill one of your jobs", "hpcgate cancel ln3 4816214")
    cancel.add_argument("machine")
    cancel.add_argument("jobid")
    wait = add(
        "wait",
        cmd_wait,
        "wait for a job to finish; exit 0 only if it succeeded",
        "hpcgate wait ln3 4816214 --timeout 3600 && echo done",
    )
    wait.add_argument("machine")
    wait.add_argument("jobid")
    wait.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this")
    add("status", cmd_status, "show every machine's status", "hpcgate status")
    watch = add(
        "watch",
        cmd_watch,
        "print your job events as they come (with a job id: until it ends)",
        "hpcgate watch ln3 4816214 --json",
    )
    watch.add_argument("machine", nargs="?", help="only this machine's jobs")
    watch.add_argument("jobid", nargs="?", help="only this job; exit when it ends")
    watch.add_argument("--type", help="only these kinds, e.g. running,completed,failed")
    watch.add_argument("--after", help="resume after this event id")

    register_files(add)


def register_files(add: Callable[..., argparse.ArgumentParser]) -> None:
    """The file and job output commands."""
    ls = add("ls", cmd_ls, "list a directory on a machine", "hpcgate ls ln3 '~/project'")
    ls.add_argument("machine")
    ls.add_argument("path", nargs="?", default="~", help="absolute, or ~/...; default ~")
    get = add("get", cmd_get, "download a file from a machine", "hpcgate get ln3 '~/results.h5' .")
    get.add_argument("machine")
    get.add_argument("remote")
    get.add_argument("local", nargs="?", help="a file or directory; default: the remote name")
    put = add("put", cmd_put, "upload a file to a machine", "hpcgate put ln3 input.dat '~/run1/'")
    put.add_argument("machine")
    put.add_argument("local")
    put.add_argument("remote", help="a path; ending in / means: into that directory")
    put.add_argument("--no-clobber", action="store_true", help="never replace a file")
    cat = add(
        "cat",
        cmd_cat,
        "print a file of a machine",
        "hpcgate cat ln3 '~/run1/log.txt'",
        json_flag=False,
    )
    cat.add_argument("machine")
    cat.add_argument("path")
    rm = add("rm", cmd_rm, "remove a file (-r: a directory)", "hpcgate rm ln3 '~/old' -r")
    rm.add_argument("machine")
    rm.add_argument("path")
    rm.add_argument("-r", "--recursive", action="store_true")
    mkdir = add("mkdir", cmd_mkdir, "make a directory", "hpcgate mkdir ln3 '~/run2/in' -p")
    mkdir.add_argument("machine")
    mkdir.add_argument("path")
    mkdir.add_argument("-p", "--parents", action="store_true")
    logs = add(
        "logs",
        cmd_logs,
        "print what a job printed (-f: follow it until the job ends)",
        "hpcgate logs ln3 4816214 -f",
    )
    logs.add_argument("machine")
    logs.add_argument("jobid")
    logs.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    logs.add_argument("--stderr", action="store_true", help="the job's stderr, not its stdout")


def _guard(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    try:
        return handler(args)
    except UsageError as exc:
        print(f"hpcgate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except NotLoggedIn as exc:
        print(f"hpcgate: {exc.message} (run: hpcgate login)", file=sys.stderr)
        return EXIT_ERROR
    except GatewayError as exc:
        print(f"hpcgate: {exc.message}", file=sys.stderr)
        return EXIT_ERROR
