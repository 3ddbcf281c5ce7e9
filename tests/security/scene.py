"""A two-tenant scene for the security suite, the documented error shape, and a fingerprint of all state.

The scene is built only through the public API (``World``): merchants A and B, each with paid
and authorised payments, and holders H (pays A) and G (pays B), each with a linked bank account.
``State.take`` records everything a refused request must leave alone: every table's rows in the
database and what the API shows each tenant (wallets, payment lists, events, balances).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientResponse

from tests.conftest import TEST_DB_URL
from tests.integration.world import Holder, Merchant, World, auth

ERROR_TYPES = frozenset({
    "invalid_request_error", "authentication_error", "permission_error", "card_error",
    "idempotency_error", "rate_limit_error", "api_error",
})
CLIENT_ERROR_STATUSES = frozenset({400, 401, 402, 403, 404, 405, 409, 413, 422, 429})
ANY = object()  # an expectation that accepts any value
RAW_TIMEOUT_S = 5.0
RAW_RESPONSE_BYTES_MAX = 1 << 20


@dataclass(repr=False)
class Scene:
    world: World
    a: Merchant
    b: Merchant
    h: Holder
    g: Holder
    a_paid: dict[str, Any]  # A's automatic payment, succeeded (paid by H)
    a_held: dict[str, Any]  # A's manual payment, requires_capture (paid by H)
    b_paid: dict[str, Any]  # B's automatic payment, succeeded (paid by G)
    b_held: dict[str, Any]  # B's manual payment, requires_capture (paid by G)
    b_open: dict[str, Any]  # B's payment nobody paid yet
    key_ids: dict[str, str]  # "a_sk", "a_pk", "b_sk", "b_pk" -> API key id

    def __repr__(self) -> str:  # Hypothesis prints the fixtures of a failing example
        return f"Scene(a={self.a.id}, b={self.b.id}, h={self.h.id}, g={self.g.id})"

    @classmethod
    async def build(cls, world: World) -> Scene:
        a = await world.merchant("Merchant A")
        b = await world.merchant("Merchant B")
        h = await world.holder(top_up=10_000)
        g = await world.holder(top_up=10_000)
        a_paid = await world.payment(a, 1_000)
        await world.pay(h, a_paid["id"])
        a_held = await world.payment(a, 2_000, capture_method="manual")
        await world.pay(h, a_held["id"])
        b_paid = await world.payment(b, 1_500)
        await world.pay(g, b_paid["id"])
        b_held = await world.payment(b, 2_500, capture_method="manual")
        await world.pay(g, b_held["id"])
        b_open = await world.payment(b, 3_000)
        key_ids = {}
        for name, m in (("a", a), ("b", b)):
            keys = await world.call("GET", f"/v1/merchants/{m.id}/api_keys", headers=world.ops)
            for key in keys["data"]:
                key_ids[f"{name}_{key['kind'][0]}k"] = key["id"]
        return cls(world, a, b, h, g, a_paid, a_held, b_paid, b_held, b_open, key_ids)

    def headers(self, who: str) -> dict[str, str]:
        """Credentials by role name: a, b (secret keys), a_pk, b_pk, h, g, ops, anon."""
        table = {
            "a": self.a.headers, "b": self.b.headers, "a_pk": auth(self.a.publishable),
            "b_pk": auth(self.b.publishable), "h": self.h.headers, "g": self.g.headers,
            "ops": self.world.ops, "anon": {},
        }
        return dict(table[who])

    def ids(self) -> dict[str, str]:
        """Names usable in path and body templates, e.g. ``/v1/payments/{b_paid}``."""
        return {
            "a_paid": self.a_paid["id"], "a_held": self.a_held["id"], "b_paid": self.b_paid["id"],
            "b_held": self.b_held["id"], "b_open": self.b_open["id"], "a_merchant": self.a.id,
            "b_merchant": self.b.id, "a_store": self.a.store, "b_store": self.b.store,
            "h_bank": self.h.bank_account, "g_bank": self.g.bank_account,
            "a_paid_hex": self.a_paid["id"].removeprefix("pay_"),
            "h_bank_hex": self.h.bank_account.removeprefix("ba_"),
        } | {f"{name}_key": key_id for name, key_id in self.key_ids.items()}


async def send(
    world: World, method: str, path: str, headers: dict[str, str], body: Any = None
) -> tuple[ClientResponse, Any]:
    """One request; ``body`` bytes go out raw as JSON content, anything else (not None) as JSON."""
    kwargs: dict[str, Any] = {"headers": dict(headers)}
    if isinstance(body, bytes):
        kwargs["data"] = body
        kwargs["headers"]["Content-Type"] = "application/json"
    elif body is not None:
        kwargs["json"] = body
    resp = await world.client.request(method, path, **kwargs)
    text = await resp.text()
    return resp, _json_or_text(resp.headers.get("Content-Type", ""), text)


def _json_or_text(content_type: str, text: str) -> Any:
    if "json" not in content_type:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def check_error_shape(status: int, headers: Any, body: Any) -> dict[str, Any]:
    """The documented error body; returns its ``error`` object."""
    assert status in CLIENT_ERROR_STATUSES, (status, body)
    assert isinstance(body, dict) and set(body) == {"error"}, (status, body)
    error = body["error"]
    assert isinstance(error, dict), body
    assert {"type", "code", "message", "request_id"} <= set(error), error
    assert error["type"] in ERROR_TYPES, error
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    assert "param" not in error or isinstance(error["param"], str), error
    assert isinstance(error["request_id"], str) and error["request_id"], error
    assert headers.get("Request-Id") == error["request_id"], (headers.get("Request-Id"), error)
    return error


def assert_error(
    resp: ClientResponse, body: Any, status: int | tuple[int, ...], type_: Any, code: Any, param: Any = None
) -> dict[str, Any]:
    """Status, ``type``, ``code`` and ``param`` (None: no param) of an error; ``ANY`` skips a check."""
    allowed = status if isinstance(status, tuple) else (status,)
    assert resp.status in allowed, (resp.status, body)
    error = check_error_shape(resp.status, resp.headers, body)
    if type_ is not ANY:
        assert error["type"] == type_, error
    if code is not ANY:
        assert error["code"] == code, error
    if param is not ANY:
        assert error.get("param") == param, error
    return error


@dataclass(frozen=True)
class Case:
    """One request that must be refused: who sends it, what, and the error expected."""

    who: str
    method: str
    path: str  # may name scene ids: "/v1/payments/{b_paid}"
    body: Any = None  # dict/list/scalar -> JSON; bytes -> sent raw; "{name}" strings take scene ids
    status: int | tuple[int, ...] = 400
    code: Any = "invalid_parameter"
    param: Any = None
    type_: Any = "invalid_request_error"
    headers: dict[str, str] = field(default_factory=dict)


def case(name: str, *args: Any, **kwargs: Any) -> Any:
    return pytest.param(Case(*args, **kwargs), id=name)


def fill_ids(value: Any, ids: dict[str, str]) -> Any:
    """Strings ``"{name}"`` in a JSON body, replaced by the scene's id of that name."""
    if isinstance(value, str) and value.startswith("{") and value.endswith("}") and value[1:-1] in ids:
        return ids[value[1:-1]]
    if isinstance(value, dict):
        return {k: fill_ids(v, ids) for k, v in value.items()}
    return value


async def refused_and_nothing_changed(scene: Scene, c: Case) -> dict[str, Any]:
    """Send the case; assert the error it expects and that no table and no tenant's view changed."""
    ids = scene.ids()
    before = await State.take(scene)
    headers = {**scene.headers(c.who), **c.headers}
    resp, body = await send(scene.world, c.method, c.path.format(**ids), headers, fill_ids(c.body, ids))
    error = assert_error(resp, body, c.status, c.type_, c.code, c.param)
    before.assert_same(await State.take(scene))
    return error


async def _tables(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
    return [r["tablename"] for r in rows]


async def table_digests(db_url: str = TEST_DB_URL) -> dict[str, str]:
    """Every table's rows, digested: any insert, update or delete changes its digest."""
    conn = await asyncpg.connect(db_url, timeout=10)
    try:
        tables = await _tables(conn)
        digests: dict[str, str] = {}
        for table in tables:
            digests[table] = await conn.fetchval(
                "SELECT count(*)::text || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '')"
                f' FROM "{table}" t'
            )
        return digests
    finally:
        await conn.close()


async def database_text(db_url: str = TEST_DB_URL) -> dict[str, list[str]]:
    """Each table's rows as PostgreSQL prints them (bytea as hex), for scanning for secrets."""
    conn = await asyncpg.connect(db_url, timeout=10)
    try:
        tables = await _tables(conn)
        return {t: [r[0] for r in await conn.fetch(f'SELECT t::text FROM "{t}" t')] for t in tables}
    finally:
        await conn.close()


@dataclass
class State:
    tables: dict[str, str]
    views: dict[str, Any]

    @classmethod
    async def take(cls, scene: Scene) -> State:
        w = scene.world
        views: dict[str, Any] = {}
        for name in ("h", "g"):
            views[f"wallet_{name}"] = await w.call("GET", "/v1/wallet", headers=scene.headers(name))
            views[f"history_{name}"] = await w.call("GET", "/v1/wallet/transactions?limit=100",
                                                    headers=scene.headers(name))
            views[f"banks_{name}"] = await w.call("GET", "/v1/wallet/bank_accounts", headers=scene.headers(name))
        for name in ("a", "b"):
            views[f"payments_{name}"] = await w.call("GET", "/v1/payments?limit=100", headers=scene.headers(name))
            views[f"events_{name}"] = await w.call("GET", "/v1/events?limit=100", headers=scene.headers(name))
            views[f"balance_{name}"] = await w.call("GET", "/v1/balance", headers=scene.headers(name))
        return cls(await table_digests(), views)

    def assert_same(self, later: State) -> None:
        changed_tables = {t for t in set(self.tables) | set(later.tables) if self.tables.get(t) != later.tables.get(t)}
        changed_views = {v for v in self.views if self.views[v] != later.views.get(v)}
        assert not changed_tables and not changed_views, (
            f"a refused request changed state: tables {sorted(changed_tables)}, views {sorted(changed_views)}"
        )


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: Any


async def raw_request(world: World, head: bytes, body: bytes = b"") -> RawResponse:
    """Send bytes no well-behaved client library would (e.g. non-UTF-8 header values)."""
    server = world.client.server
    reader, writer = await asyncio.wait_for(asyncio.open_connection(server.host, server.port), RAW_TIMEOUT_S)
    try:
        writer.write(head.rstrip(b"\r\n") + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
        data = b""
        while len(data) < RAW_RESPONSE_BYTES_MAX:
            chunk = await asyncio.wait_for(reader.read(65536), RAW_TIMEOUT_S)
            if not chunk:
                break
            data += chunk
    finally:
        writer.close()
    top, _, payload = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip()] = value.strip()
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    return RawResponse(status, headers, _json_or_text(content_type, payload.decode("utf-8", "replace")))
