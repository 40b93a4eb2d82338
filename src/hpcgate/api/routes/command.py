"""POST /api/command/<machine>: run one command line as the user."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from hpcgate import contract
from hpcgate.api import schemas
from hpcgate.api.body import read_fields, text_field
from hpcgate.api.deps import Caller, caller, machine, until_disconnected
from hpcgate.api.envelope import ok
from hpcgate.api.routes import route
from hpcgate.api.schemas import MACHINE

router = APIRouter(tags=["command"])

MAX_COMMAND = contract.max_length(contract.COMMAND, "command")


@route(
    router,
    "/command/{name}",
    ["POST"],
    summary="Run a command line on a machine",
    description=(
        "Runs the line with the user's own shell, as the user, in their home directory. "
        "A command that runs and fails is still a successful call: see `retcode`."
    ),
    openapi_extra=schemas.body(schemas.CommandBody),
    responses=schemas.example(schemas.COMMAND_EXAMPLE),
)
async def run_command(
    request: Request, name: str = MACHINE, who: Caller = Depends(caller)
) -> JSONResponse:
    target = machine(request, name)
    command_line = text_field(await read_fields(request), "command", max_length=MAX_COMMAND)
    result = await until_disconnected(request, target.run_command(who.account, command_line))
    return ok(asdict(result))
