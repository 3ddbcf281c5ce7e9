"""A small local gateway with the real one's interface, for what the real one cannot be made to do on
demand (fail, throttle, hang) and for the webhook endpoints, built in parallel on the server side.

Every request is recorded (method, path, query, headers, JSON body, arrival time). ``script`` queues
answers per ``(method, path)``: each request pops the next one; when the queue is empty the
in-memory resources answer as the gateway would.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    at_s: float


@dataclass
class Scripted:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    raw: bytes | None = None


def error(status: int, type_: str, code: str, message: str = "scripted", param: str | None = None,
          headers: dict[str, str] | None = None) -> Scripted:
    err: dict[str, Any] = {"type": type_, "code": code, "message": message, "request_id": f"req_{code}"}
    if param is not None:
        err["param"] = param
    return Scripted(status, {"error": err}, headers or {})


class FakeGateway:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.script: dict[tuple[str, str], list[Scripted]] = {}
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.deliveries: dict[str, list[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = [{"id": f"evt_{n}", "object": "event", "type": "payment.succeeded" if n % 2 else
                        "payment.created", "created": 1_700_000_000 + n, "data": {"object": {"id": f"pay_{n}"}}}
                       for n in range(7, 0, -1)]
        self._ids = itertools.count(1)
        self.app = web.Application(middlewares=[self._middleware])
        r = self.app.router
        r.add_post("/v1/webhook_endpoints", self.create_endpoint)
        r.add_get("/v1/webhook_endpoints", self.list_endpoints)
        r.add_get("/v1/webhook_endpoints/{id}", self.get_endpoint)
        r.add_post("/v1/webhook_endpoints/{id}", self.update_endpoint)
        r.add_delete("/v1/webhook_endpoints/{id}", self.delete_endpoint)
        r.add_post("/v1/webhook_endpoints/{id}/rotate_secret", self.rotate)
        r.add_get("/v1/webhook_endpoints/{id}/deliveries", self.list_deliveries)
        r.add_get("/v1/events", self.list_events)
        r.add_get("/v1/events/{id}", self.get_event)
        r.add_post("/v1/events/{id}/redeliver", self.redeliver)
        r.add_post("/v1/payments", self.create_payment)
        r.add_get("/v1/payments/{id}", self.get_payment)

    def queue(self, method: str, path: str, *answers: Scripted) -> None:
        self.script.setdefault((method, path), []).extend(answers)

    def requests(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        raw = await request.read()
        self.seen.append(Seen(request.method, request.path, dict(request.query), dict(request.headers),
                              json.loads(raw) if raw else None, time.monotonic()))
        if request.headers.get("Authorization") != "Bearer sk_test_fake":
            return web.json_response({"error": {"type": "authentication_error", "code": "unauthenticated",
                                                "message": "bad key", "request_id": "req_auth"}}, status=401)
        queued = self.script.get((request.method, request.path))
        if queued:
            answer = queued.pop(0)
            if answer.delay_s:
                await asyncio.sleep(answer.delay_s)
            if answer.raw is not None:
                return web.Response(status=answer.status, body=answer.raw, headers=answer.headers)
            return web.json_response(answer.body, status=answer.status, headers=answer.headers)
        result: web.StreamResponse = await handler(request)
        return result

    def _id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):04d}"

    @staticmethod
    def _page(items: list[dict[str, Any]], query: Any) -> web.Response:
        limit = int(query.get("limit", 10))
        after = query.get("starting_after")
        if after is not None:
            ids = [item["id"] for item in items]
            items = items[ids.index(after) + 1:] if after in ids else []
        return web.json_response({"object": "list", "data": items[:limit], "has_more": len(items) > limit})

    def _missing(self) -> web.Response:
        return web.json_response({"error": {"type": "invalid_request_error", "code": "resource_missing",
                                            "message": "no such object", "request_id": "req_missing"}}, status=404)

    async def create_endpoint(self, request: web.Request) -> web.Response:
        body = await request.json()
        ep = {"id": self._id("we"), "object": "webhook_endpoint", "url": body["url"],
              "enabled_events": body.get("enabled_events", ["*"]), "description": body.get("description"),
              "status": "enabled", "created": int(time.time())}
        self.endpoints = {ep["id"]: ep, **self.endpoints}  # newest first
        self.deliveries[ep["id"]] = [{"id": f"whd_{n}", "object": "webhook_delivery", "status": 200}
                                     for n in range(5, 0, -1)]
        return web.json_response(dict(ep, secret=_secret()), status=201)

    async def list_endpoints(self, request: web.Request) -> web.Response:
        return self._page(list(self.endpoints.values()), request.query)

    async def get_endpoint(self, request: web.Request) -> web.Response:
        ep = self.endpoints.get(request.match_info["id"])
        return web.json_response(ep) if ep else self._missing()

    async def update_endpoint(self, request: web.Request) -> web.Response:
        ep = self.endpoints.get(request.match_info["id"])
        if ep is None:
            return self._missing()
        body = await request.json()
        if "disabled" in body:
            ep["status"] = "disabled" if body.pop("disabled") else "enabled"
        ep.update(body)
        return web.json_response(ep)

    async def delete_endpoint(self, request: web.Request) -> web.Response:
        ep = self.endpoints.pop(request.match_info["id"], None)
        return web.json_response({"id": ep["id"], "object": "webhook_endpoint", "deleted": True}) if ep \
            else self._missing()

    async def rotate(self, request: web.Request) -> web.Response:
        ep = self.endpoints.get(request.match_info["id"])
        return web.json_response(dict(ep, secret=_secret())) if ep else self._missing()

    async def list_deliveries(self, request: web.Request) -> web.Response:
        found = self.deliveries.get(request.match_info["id"])
        return self._page(found, request.query) if found is not None else self._missing()

    async def list_events(self, request: web.Request) -> web.Response:
        q = request.query
        items = [e for e in self.events
                 if ("type" not in q or e["type"] == q["type"])
                 and ("created[gte]" not in q or e["created"] >= int(q["created[gte]"]))
                 and ("created[lt]" not in q or e["created"] < int(q["created[lt]"]))]
        return self._page(items, q)

    async def get_event(self, request: web.Request) -> web.Response:
        found = [e for e in self.events if e["id"] == request.match_info["id"]]
        return web.json_response(found[0]) if found else self._missing()

    async def redeliver(self, request: web.Request) -> web.Response:
        found = [e for e in self.events if e["id"] == request.match_info["id"]]
        return web.json_response(dict(found[0], redelivery="queued"), status=202) if found else self._missing()

    async def create_payment(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"id": self._id("pay"), "object": "payment", "status": "requires_payment_method",
                                  **body}, status=201)

    async def get_payment(self, request: web.Request) -> web.Response:
        return web.json_response({"id": request.match_info["id"], "object": "payment"})


def _secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


@asynccontextmanager
async def running() -> AsyncIterator[tuple[FakeGateway, str]]:
    fake = FakeGateway()
    server = TestServer(fake.app, host="127.0.0.1")
    await server.start_server()
    try:
        yield fake, str(server.make_url("/"))
    finally:
        await server.close()
