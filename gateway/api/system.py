"""Health, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from aiohttp import web

from gateway.api import openapi
from gateway.api.routing import Call, api
from gateway.metrics import exposition
from gateway.services import operations


class Health(msgspec.Struct):
    status: Literal["ok"]


@api.route("GET", "/healthz", summary="Liveness: the process answers", auth=None, response=Health, tag="system",
           database=False)
async def healthz(call: Call[None, None]) -> Any:
    """Answers while the process runs; touches nothing else."""
    return Health(status="ok")


@api.route("GET", "/readyz", summary="Readiness: database reachable (503 if not); Redis down means degraded",
           auth=None, response=operations.Readiness, tag="system", database=False,
           errors={503: operations.Readiness})
async def readyz(call: Call[None, None]) -> Any:
    """Whether the gateway can serve: 200 when the database answers (status degraded when Redis does not), 503
    when it does not."""
    ready = await operations.readiness(call.svc)
    status = 503 if ready.status == "unavailable" else 200
    return web.Response(body=msgspec.json.encode(ready), status=status, content_type="application/json")


@api.route("GET", "/metrics", summary="Prometheus metrics", auth=None, tag="system", produces="text/plain",
           database=False)
async def metrics(call: Call[None, None]) -> Any:
    """Prometheus metrics in the text exposition format."""
    body, content_type = exposition()
    return web.Response(body=body, headers={"Content-Type": content_type})


@api.route("GET", "/openapi.json", summary="This API's OpenAPI 3.1 description", auth=None, tag="system",
           database=False)
async def openapi_json(call: Call[None, None]) -> Any:
    """This document: generated from the route declarations."""
    return web.Response(body=openapi.document(api), content_type="application/json")
