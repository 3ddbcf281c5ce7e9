"""Each metric operators watch moves when its event happens, read the way Prometheus reads it
(``GET /metrics``); and a scrape of ``gateway serve --processes 2`` counts every process's requests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.services.context import Services
from gateway.workers.expiry import tick
from tests.conftest import make_settings
from tests.e2e.harness import REPO_ROOT, VENV_BIN, GatewayProcess, free_tcp_port, stop_process
from tests.integration.test_qr_paycode import _device_holder, _qr, _scan_pay
from tests.integration.world import World

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def scrape(client: TestClient) -> Samples:
    resp = await client.get("/metrics")
    assert resp.status == 200
    return parse(await resp.text())


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 for a labelled series that has not happened yet (as in PromQL's absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` that carries ``labels`` (whatever its other labels)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def _sql(db_url: str, sql: str) -> None:
    conn = await asyncpg.connect(db_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_a_payment_counts_by_channel_and_outcome_and_its_posting_is_timed(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=1_000)
    p = await world.payment(m, 300)
    before = await scrape(world.client)
    await world.pay(h, p["id"], key="pay-1")
    await world.pay(h, p["id"], key="pay-1")  # a replay is no second payment
    after = await scrape(world.client)
    payments = "gateway_payments_total"
    assert value(after, payments, channel="wallet", outcome="succeeded") - value(
        before, payments, channel="wallet", outcome="succeeded") == 1
    assert total(after, "gateway_idempotency_replays_total") - total(before, "gateway_idempotency_replays_total") == 1
    posted = "gateway_ledger_post_duration_seconds_count"
    assert value(after, posted, kind="capture") - value(before, posted, kind="capture") == 1


async def test_a_decline_counts_by_channel_and_code_once_per_attempt(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=100)
    p = await world.payment(m, 500)
    before = await scrape(world.client)
    await world.pay(h, p["id"], expect=402, key="decline-1")  # stored with its key
    await world.pay(h, p["id"], expect=402, key="decline-1")  # replayed: no new attempt
    await world.pay(h, p["id"], expect=402)  # no key: raised, another attempt
    after = await scrape(world.client)
    declines = "gateway_payment_declines_total"
    assert value(after, declines, channel="wallet", code="insufficient_funds") - value(
        before, declines, channel="wallet", code="insufficient_funds") == 2
    assert value(after, "gateway_payments_total", channel="wallet", outcome="declined") - value(
        before, "gateway_payments_total", channel="wallet", outcome="declined") == 2


async def test_pay_code_channel_counts_the_charge_then_its_confirmation(world: World) -> None:
    m = await world.merchant()
    h = await _device_holder(world, 500_000)  # a pay-code needs a device-bound login
    await world.call("POST", "/v1/wallet/pin", headers=h.headers, json={"pin": "246810"})
    code = (await world.call("POST", "/v1/wallet/pay_codes", 201, headers=h.headers, json={}))["code"]
    before = await scrape(world.client)
    charged = await world.call("POST", "/v1/pay_code_charges", 201, headers=m.headers,
                               json={"pay_code": code, "amount": 150_000, "currency": "CNY", "store": m.store})
    assert charged["status"] == "requires_action"
    await world.call("POST", f"/v1/wallet/payments/{charged['id']}/confirm", 200, headers=h.headers,
                     json={"pin": "246810"})
    after = await scrape(world.client)
    for outcome in ("requires_action", "succeeded"):
        assert value(after, "gateway_payments_total", channel="pay_code", outcome=outcome) - value(
            before, "gateway_payments_total", channel="pay_code", outcome=outcome) == 1


async def test_qr_channel_counts_a_scan_paid_and_a_refused_second_scan(world: World) -> None:
    m = await world.merchant()
    h = await world.holder(top_up=10_000)
    _, code = await _qr(world, m, 3_800)
    before = await scrape(world.client)
    assert (await _scan_pay(world, h, code["payload"]))["status"] == "succeeded"
    await _scan_pay(world, h, code["payload"], 409)  # the code is used: refused, not declined
    after = await scrape(world.client)
    for outcome in ("succeeded", "error"):
        assert value(after, "gateway_payments_total", channel="qr", outcome=outcome) - value(
            before, "gateway_payments_total", channel="qr", outcome=outcome) == 1
    assert total(after, "gateway_payment_declines_total", channel="qr") == total(
        before, "gateway_payment_declines_total", channel="qr")


async def test_request_latency_is_by_route_template_method_and_status_class(world: World) -> None:
    m = await world.merchant()
    p = await world.payment(m, 300)
    missing = "pay_" + "0" * 26
    before = await scrape(world.client)
    await world.call("GET", f"/v1/payments/{p['id']}", headers=m.headers)
    await world.call("GET", f"/v1/payments/{missing}", 404, headers=m.headers)
    after = await scrape(world.client)
    name = "gateway_http_request_duration_seconds_count"
    for status_class in ("2xx", "4xx"):
        labels = {"method": "GET", "route": "/v1/payments/{id}", "status_class": status_class}
        assert value(after, name, **labels) - value(before, name, **labels) == 1
    assert not any(p["id"] in dict(labels).get("route", "") for _, labels in after)  # never a raw path


async def test_pool_gauges_and_acquire_wait(world: World, settings: Any) -> None:
    before = await scrape(world.client)
    await world.merchant()
    after = await scrape(world.client)
    waits = "gateway_db_pool_acquire_wait_seconds_count"
    assert value(after, waits) > value(before, waits)
    # The scrape holds no connection: every one the requests took is back (this test's pools only).
    assert value(after, "gateway_db_pool_connections_in_use") == 0
    assert value(after, "gateway_db_pool_connections_max") >= settings.database.pool_max
    assert 1 <= value(after, "gateway_db_pool_connections_open") <= settings.database.pool_max


async def test_build_info_says_what_runs(client: TestClient) -> None:
    samples = await scrape(client)
    labels = {"version": metadata.version("wallet-gateway"), "python": platform.python_version(), "mode": "test"}
    assert value(samples, "gateway_build_info", **labels) == 1


async def test_expiry_lag_is_the_age_of_the_oldest_overdue_payment(world: World, clean_db: str) -> None:
    m = await world.merchant()
    await world.payment(m, 100)
    await _sql(clean_db, "UPDATE payments SET expires_at = now() - interval '120 seconds'")
    svc = await Services.start(make_settings())
    try:
        await tick(svc)  # measures, then expires it
        lagging = await scrape(world.client)
        await tick(svc)
        caught_up = await scrape(world.client)
    finally:
        await svc.stop()
    assert value(lagging, "gateway_expiry_lag_seconds") >= 120
    assert value(caught_up, "gateway_expiry_lag_seconds") == 0


async def test_a_key_whose_request_died_is_taken_over(world: World, clean_db: str) -> None:
    """The first request claims its key, then its database session dies while it waits: the key stays
    started with nobody alive behind it, and the retry takes it over. A capture: a use case done in one
    statement (creating, paying) claims no key before its work, so it has no started key to take over."""
    m = await world.merchant()
    h = await world.holder(top_up=1_000)
    p = await world.payment(m, 300, capture_method="manual")
    await world.call("POST", f"/v1/wallet/payments/{p['id']}/pay", headers=h.headers, json={})
    headers = {**m.headers, "Idempotency-Key": f"dies-{uuid.uuid4()}"}
    blocker = await asyncpg.connect(clean_db)
    try:
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM payments FOR UPDATE")
        first = asyncio.create_task(world.client.post(f"/v1/payments/{p['id']}/capture", json={}, headers=headers))
        waiting = None
        for _ in range(200):  # until the first request waits on the payment row
            waiting = await blocker.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
                " AND pid <> pg_backend_pid()")
            if waiting is not None:
                break
            await asyncio.sleep(0.02)
        assert waiting is not None
        await blocker.execute("SELECT pg_terminate_backend($1)", waiting)
        assert (await first).status == 503
        await tx.rollback()
    finally:
        await blocker.close()
    before = await scrape(world.client)
    retry = await world.client.post(f"/v1/payments/{p['id']}/capture", json={}, headers=headers)
    assert retry.status == 200 and "Idempotent-Replayed" not in retry.headers
    after = await scrape(world.client)
    assert value(after, "gateway_idempotency_takeovers_total") - value(before, "gateway_idempotency_takeovers_total") == 1


@contextlib.asynccontextmanager
async def _redis_server(port: int, tmp_path: Path) -> AsyncIterator[None]:
    process = await asyncio.create_subprocess_exec(
        "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
        "--dir", str(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):  # until it accepts connections
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            await asyncio.sleep(0.02)
        yield
    finally:
        await stop_process(process)


async def test_redis_breaker_opens_on_a_failure_and_closes_when_redis_answers(
    clean_db: str, app_factory: Callable[..., Any], tmp_path: Path
) -> None:
    port = free_tcp_port()
    settings = make_settings(redis={"url": f"redis://127.0.0.1:{port}/0", "timeout_s": 0.2})
    async with TestClient(TestServer(app_factory(settings), host="127.0.0.1")) as client:
        before = await scrape(client)
        assert (await client.get("/readyz")).status == 200  # degraded: nothing listens there yet
        down = await scrape(client)
        assert value(down, "gateway_redis_breaker_open") == 1
        assert value(down, "gateway_redis_failures_total") > value(before, "gateway_redis_failures_total")
        async with _redis_server(port, tmp_path):
            assert (await (await client.get("/readyz")).json())["redis"] == "ok"
            up = await scrape(client)
    assert value(up, "gateway_redis_breaker_open") == 0


# -- several processes ---------------------------------------------------------------------------

REQUESTS_MADE = 40


async def _get(url: str) -> int:
    """One request on a fresh connection (SO_REUSEPORT spreads connections, not requests)."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session, session.get(
            url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        await resp.read()
        return resp.status


async def _scrape_url(url: str) -> Samples:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session, session.get(
            f"{url}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as resp:
        assert resp.status == 200
        return parse(await resp.text())


async def test_a_scrape_counts_the_requests_of_every_process(tmp_path: Path) -> None:
    """``gateway serve --processes 2`` in multiprocess mode: whichever process answers the scrape, the
    request total is every request answered so far, each scrape counted by the next one."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    gateway = GatewayProcess(free_tcp_port(), f"gateway_metrics_{os.getpid()}_{uuid.uuid4().hex[:8]}",
                             {"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    await gateway.cli("migrate")
    with gateway.log_path.open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "gateway"), "serve", "--processes", "2", env=gateway.env, cwd=REPO_ROOT,
            stdout=log_file, stderr=log_file)
    children: set[int] = set()
    try:
        answered = 0
        for _ in range(300):  # until both children serve (each announces its build as it starts)
            with contextlib.suppress(aiohttp.ClientError):
                samples = await _scrape_url(gateway.url)
                answered += 1
                children = {int(dict(labels)["pid"]) for name, labels in samples if name == "gateway_build_info"}
                if len(children) == 2:
                    break
            assert process.returncode is None, gateway.log_path.read_text()[-3000:]
            await asyncio.sleep(0.05)
        assert len(children) == 2 and process.pid not in children
        statuses = await asyncio.gather(*(_get(f"{gateway.url}/healthz") for _ in range(REQUESTS_MADE)))
        assert statuses == [200] * REQUESTS_MADE
        answered += REQUESTS_MADE
        seen = []
        for _ in range(6):
            samples = await _scrape_url(gateway.url)
            seen.append(total(samples, "gateway_http_requests_total"))
            assert seen[-1] == answered, (seen, answered)
            answered += 1
        assert seen == sorted(seen)
    finally:
        await stop_process(process)
        for pid in children:  # today's parent leaves its children behind when it is stopped
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        await gateway.drop()
