"""The Python client of an hpcgate gateway.

from hpcgate.client import Client

with Client("http://127.0.0.1:8080") as gw:
    gw.login("alice", "wonderland")
    jobid = gw.submit("ln3", script=open("job.sh").read(), name="hello", time=10)
    job = gw.wait("ln3", jobid, timeout=600)
    print(job.state, job.exit_code, [step.id for step in job.steps])
"""

from hpcgate.client._client import AsyncClient, Client
from hpcgate.client.errors import (
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    GatewayError,
    NotFound,
    NotLoggedIn,
    ServerError,
    TimedOut,
    Unavailable,
    WaitTimedOut,
)
from hpcgate.client.files import FileEntry, JobOutput
from hpcgate.client.models import CommandResult, Job, MachineStatus, Step

__all__ = [
    "AsyncClient",
    "BadRequest",
    "Client",
    "CommandResult",
    "Conflict",
    "ConnectionFailed",
    "FileEntry",
    "Forbidden",
    "GatewayError",
    "Job",
    "JobOutput",
    "MachineStatus",
    "NotFound",
    "NotLoggedIn",
    "ServerError",
    "Step",
    "TimedOut",
    "Unavailable",
    "WaitTimedOut",
]
