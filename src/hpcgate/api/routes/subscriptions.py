"""Webhook subscriptions of the logged-in user: create, list, show, delete, delivery log."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import JSONResponse

from hpcgate.api import schemas
from hpcgate.api.body import read_fields
from hpcgate.api.deps import Caller, caller
from hpcgate.api.envelope import ok
from hpcgate.api.routes import route
from hpcgate.api.routes.events import events_of
from hpcgate.errors import NotFound
from hpcgate.services.webhooks import Webhooks

router = APIRouter(tags=["webhooks"])
SUBSCRIPTION = Path(..., max_length=64, description="a subscription id, e.g. sub_3f2a...")


def webhooks_of(request: Request) -> Webhooks:
    found = events_of(request).webhooks
    if found is None:
        raise NotFound("webhooks are not enabled on this gateway")
    return found


@route(
    router,
    "/subscriptions",
    ["POST"],
    summary="Subscribe a URL to your job events (a webhook)",
    description=(
        "Fields: `url` (http or https; private, loopback and link-local destinations are "
        "refused unless the gateway allows them), optional `types` (a list, or a comma-"
        "separated string, of event types such as `org.hpcgate.job.completed`), `machine`, "
        "`jobid`, `expires_in` (seconds). The answer holds the `secret` that signs every "
        "delivery (the `Hpcgate-Signature` header): it is shown only this once."
    ),
    openapi_extra=schemas.body(schemas.SubscriptionBody),
    responses=schemas.example(schemas.SUBSCRIPTION_EXAMPLE | {"secret": "..."}),
)
async def create(request: Request, who: Caller = Depends(caller)) -> JSONResponse:
    fields = await read_fields(request)
    created = await webhooks_of(request).create(
        who.account,
        fields.get("url"),
        types=fields.get("types"),
        machine=fields.get("machine"),
        jobid=fields.get("jobid"),
        expires_in=fields.get("expires_in"),
    )
    return ok(created)


@route(
    router,
    "/subscriptions",
    ["GET"],
    summary="Your webhook subscriptions",
    responses=schemas.example([schemas.SUBSCRIPTION_EXAMPLE]),
)
async def listing(request: Request, who: Caller = Depends(caller)) -> JSONResponse:
    return ok(await webhooks_of(request).listed(who.account))


@route(
    router,
    "/subscriptions/{subscription}",
    ["GET"],
    summary="One of your subscriptions",
    responses=schemas.example(schemas.SUBSCRIPTION_EXAMPLE),
)
async def show(
    request: Request, subscription: str = SUBSCRIPTION, who: Caller = Depends(caller)
) -> JSONResponse:
    return ok(await webhooks_of(request).get(who.account, subscription))


@route(
    router,
    "/subscriptions/{subscription}",
    ["DELETE"],
    summary="Delete a subscription",
    responses=schemas.example(""),
)
async def delete(
    request: Request, subscription: str = SUBSCRIPTION, who: Caller = Depends(caller)
) -> JSONResponse:
    await webhooks_of(request).delete(who.account, subscription)
    return ok("")


@route(
    router,
    "/subscriptions/{subscription}/deliveries",
    ["GET"],
    summary="The delivery log of a subscription, newest first",
    responses=schemas.example([schemas.DELIVERY_EXAMPLE]),
)
async def deliveries(
    request: Request, subscription: str = SUBSCRIPTION, who: Caller = Depends(caller)
) -> JSONResponse:
    return ok(await webhooks_of(request).deliveries(who.account, subscription))
