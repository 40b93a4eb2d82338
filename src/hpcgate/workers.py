"""``hpcgate serve --workers N``: N gateway processes accepting on one listening socket.

uvicorn's supervisor binds the socket, then starts each worker as a fresh interpreter
(multiprocessing's spawn), which imports the app from a string: :func:`worker_app` builds
it from the configuration the parent passes on in the environment (``HPCGATE_CONFIG``
and ``HPCGATE_SERVER__*`` overrides), so every worker runs with the same settings.

Workers share nothing in memory, so they need the Redis store (sessions, snapshots and
Idempotency-Key records must be seen by every process), and the monitors run beside
them as ``hpcgate monitor``, never once per worker. Their metrics are pooled in a
directory of memory-mapped files (see :mod:`hpcgate.metrics`): a scrape answered by any
worker counts all of them.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp

from hpcgate.config import Config, load_config
from hpcgate.metrics import MULTIPROCESS_ENV

log = logging.getLogger(__name__)

APP = "hpcgate.workers:worker_app"
PROTOCOL = "hpcgate.workers:Protocol"


def refusal(config: Config, workers: int) -> str | None:
    """Why ``config`` cannot be served by ``workers`` processes, or None."""
    if workers <= 1:
        return None
    if config.store.backend != "redis":
        return (
            f'--workers {workers} needs the shared store: set [store] backend = "redis" '
            "(every process must see the same sessions, snapshots and Idempotency-Key "
            "records), and run `hpcgate monitor` beside the gateway"
        )
    if config.embedded_monitors:
        return (
            f"--workers {workers} would run the monitors {workers} times: unset "
            "monitor.embedded and run `hpcgate monitor` beside the gateway"
        )
    return None


def serve(config: Config, config_path: str | None, workers: int) -> int:
    """Serve ``config`` with ``workers`` processes until stopped (the parent's side)."""
    import uvicorn

    from hpcgate.api.server import uvicorn_settings

    server = config.server
    if config_path:
        os.environ["HPCGATE_CONFIG"] = str(Path(config_path).resolve())
    # the command line's --host and --port reach the workers as overrides
    os.environ["HPCGATE_SERVER__HOST"] = server.host
    os.environ["HPCGATE_SERVER__PORT"] = str(server.port)
    os.environ["HPCGATE_SERVER__WORKERS"] = str(workers)
    pool = _metrics_directory(config)
    os.environ[MULTIPROCESS_ENV] = str(pool)
    log.info("serving with %d worker processes; metrics pooled in %s", workers, pool)
    try:
        uvicorn.run(
            APP,
            factory=True,
            workers=workers,
            http=PROTOCOL,  # built in each worker (see __getattr__)
            **uvicorn_settings(server),
        )
    finally:
        if config.metrics.multiprocess_dir is None:
            shutil.rmtree(pool, ignore_errors=True)
    return 0


def _metrics_directory(config: Config) -> Path:
    """An empty directory for the workers' metric files: figures of an earlier run,
    whose processes are gone, must not be added to this one's."""
    chosen = config.metrics.multiprocess_dir
    if chosen is None:
        parent = os.environ.get("RUNTIME_DIRECTORY") or None  # systemd's RuntimeDirectory=
        return Path(tempfile.mkdtemp(prefix="hpcgate-metrics-", dir=parent))
    chosen.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in chosen.glob("*.db"):
        stale.unlink()
    return chosen


@cache
def _config() -> Config:
    return load_config()


def worker_app() -> ASGIApp:
    """The application of one worker (uvicorn's factory, called in the worker)."""
    from hpcgate.api.observe import configure_logging
    from hpcgate.app import create_app

    config = _config()
    configure_logging(config.server)
    if os.environ.get(MULTIPROCESS_ENV):
        from prometheus_client.multiprocess import mark_process_dead

        # a worker that stops takes its gauges (open SSH connections) with it
        atexit.register(mark_process_dead, os.getpid())
    return create_app(config)


def __getattr__(name: str) -> Any:
    # ``Protocol``: uvicorn imports the HTTP protocol class by name in each worker; it is
    # built there from the configuration, like the single-process `serve` builds it.
    if name == "Protocol":
        from hpcgate.api.server import ConnectionLimits, protocol_class, raise_descriptor_limit

        limits = ConnectionLimits.from_config(_config().server, raise_descriptor_limit())
        return protocol_class(limits)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
