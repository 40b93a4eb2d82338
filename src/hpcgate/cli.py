"""The ``hpcgate`` command."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import pwd
import re
import sys

import hpcgate
from hpcgate.errors import GatewayError

log = logging.getLogger("hpcgate")

EPILOG = """\
for users of a gateway:
  hpcgate login --url https://gateway.example.org alice
  hpcgate submit ln3 job.sh --name hello --time 10
  hpcgate queue ln3;  hpcgate wait ln3 4816214;  hpcgate show ln3 4816214

for its administrators:
  hpcgate serve --config config/demo.toml
  HPCGATE_SERVER__PORT=9000 hpcgate serve --config /etc/hpcgate/hpcgate.toml
  hpcgate monitor --config /etc/hpcgate/hpcgate.toml   # with a Redis store
  hpcgate hash-password            # for an auth.users_file entry
"""


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from hpcgate import workers
    from hpcgate.api.observe import configure_logging
    from hpcgate.api.server import (
        ConnectionLimits,
        protocol_class,
        raise_descriptor_limit,
        uvicorn_settings,
    )
    from hpcgate.app import create_app
    from hpcgate.config import ConfigError, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"hpcgate: {exc}", file=sys.stderr)
        return 2
    if args.host:
        config.server.host = args.host
    if args.port:
        config.server.port = args.port
    if args.workers:
        config.server.workers = args.workers
    configure_logging(config.server)  # text or JSON lines, with each request's id
    refused = workers.refusal(config, config.server.workers)
    if refused:
        print(f"hpcgate: {refused}", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid()).pw_name
        log.warning(
            "not running as root: this gateway serves only its own user, %s; "
            "every other login is refused",
            me,
        )
    if not config.machines:
        log.warning("no machines are configured: add a [machines.<name>] section")
    descriptors = raise_descriptor_limit()
    try:
        app = create_app(config)
    except ConfigError as exc:
        print(f"hpcgate: {exc}", file=sys.stderr)
        return 2
    log.info("machines: %s", ", ".join(sorted(config.machines)) or "none")
    server = config.server
    smallest_submit = 3 * config.limits.script_bytes + 64 * 1024  # percent-encoded: ~3x
    if server.max_body_bytes < smallest_submit:
        log.warning(
            "server.max_body_bytes = %d may refuse a form-encoded script of "
            "limits.script_bytes = %d; give it at least %d",
            server.max_body_bytes,
            config.limits.script_bytes,
            smallest_submit,
        )
    if server.workers > 1:
        return workers.serve(config, args.config, server.workers)
    uvicorn.run(
        app,
        # httptools with deadlines on a request's head and body, a cap on the head and on
        # the connections: see hpcgate.api.server
        http=protocol_class(ConnectionLimits.from_config(server, descriptors)),
        **uvicorn_settings(server),
    )
    return 0


def _monitor(args: argparse.Namespace) -> int:
    import asyncio
    import signal

    from hpcgate.config import ConfigError, load_config
    from hpcgate.wiring import build_gateway, build_monitor

    try:
        config = load_config(args.config)
        gateway = build_gateway(config)
        monitor = build_monitor(gateway, args.machine or None)
    except (ConfigError, GatewayError) as exc:
        print(f"hpcgate: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.server.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if config.store.backend == "memory" and not args.once:
        log.warning(
            "store.backend is memory: snapshots stay in this process and no gateway sees "
            "them; configure [store] backend = 'redis' for a separate monitor"
        )

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            if args.once:
                for snapshot in await monitor.run_once():
                    state = "ok" if snapshot.ok else f"FAILED: {snapshot.error}"
                    print(
                        f"{snapshot.machine}: {state}; queue {snapshot.queue_counts()}; "
                        f"nodes {snapshot.partitions}; {snapshot.probe_seconds:.3f} s"
                    )
            else:
                await monitor.run_forever(stop)
        finally:
            await gateway.close()

    asyncio.run(main())
    return 0


def _hash_password(args: argparse.Namespace) -> int:
    from hpcgate.auth.users_file import hash_password

    password = getpass.getpass("password: ")
    if password != getpass.getpass("again: "):
        print("hpcgate: the passwords differ", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="hpcgate",
        description="An HPC web gateway that runs everything as the logged-in user: the "
        "server (serve, monitor) and its command-line client.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"hpcgate {hpcgate.__version__}")
    commands = top.add_subparsers(dest="verb", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the gateway",
        description="Run the HTTP gateway. Settings come from the TOML file and HPCGATE_* "
        "environment variables (see config/example.toml).",
        epilog="example:\n  hpcgate serve --config config/demo.toml --port 8080",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", metavar="FILE", help="TOML config (default: $HPCGATE_CONFIG)")
    serve.add_argument("--host", help="listen address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="gateway processes sharing the port (overrides server.workers); above 1 "
        "needs the Redis store, with `hpcgate monitor` running beside",
    )
    serve.set_defaults(handler=_serve)

    monitor = commands.add_parser(
        "monitor",
        help="keep the status store's snapshots of the machines fresh",
        description="Probe each machine every monitor.interval seconds (one all-users job "
        "listing and one node listing per probe) and write timestamped snapshots to the "
        "store, from which every gateway answers GET /api/job and queue listings. Run one "
        "per machine or one for several, next to a Redis store.",
        epilog="examples:\n  hpcgate monitor --config /etc/hpcgate/hpcgate.toml\n"
        "  hpcgate monitor --config hpcgate.toml --machine ln3 --once",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    monitor.add_argument("--config", metavar="FILE", help="TOML config (default: $HPCGATE_CONFIG)")
    monitor.add_argument(
        "--machine", action="append", metavar="NAME", help="only this machine (repeatable)"
    )
    monitor.add_argument("--once", action="store_true", help="probe once, print, and exit")
    monitor.set_defaults(handler=_monitor)

    hashing = commands.add_parser(
        "hash-password",
        help="print an argon2 hash for a users file",
        description="Prompt for a password and print its argon2id hash, for the "
        "password_hash of an entry in auth.users_file.",
    )
    hashing.set_defaults(handler=_hash_password)

    from hpcgate.client.cli import register

    register(commands)
    return top


# The commands that run the gateway need the "server" extra; the rest are the client.
SERVER_COMMANDS = frozenset({"serve", "monitor", "hash-password"})


def missing_server_packages() -> list[str]:
    """The distributions of the ``server`` extra that are not installed (none when
    hpcgate itself is not installed as a distribution, e.g. run from a source tree)."""
    from importlib import metadata

    try:
        requirements = metadata.requires("hpcgate") or []
    except metadata.PackageNotFoundError:
        return []
    missing = []
    for requirement in requirements:
        name, _, marker = requirement.partition(";")
        if not re.search(r"""extra\s*==\s*["']server["']""", marker):
            continue
        distribution = re.split(r"[\s\[<>=!~;]", name.strip(), maxsplit=1)[0]
        try:
            metadata.distribution(distribution)
        except metadata.PackageNotFoundError:
            missing.append(distribution)
    return missing


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.verb in SERVER_COMMANDS and (missing := missing_server_packages()):
        print(
            f"hpcgate: '{args.verb}' runs the gateway, which needs the server extra: "
            f"pip install 'hpcgate[server]' (missing: {', '.join(missing)})",
            file=sys.stderr,
        )
        return 2
    handler = args.handler
    result: int = handler(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
