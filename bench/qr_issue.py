"""QR issue rate: how many dynamic codes per second the gateway issues, payload only and with image.

Run: ``.venv/bin/python bench/qr_issue.py [--quick]``. Prints figures, asserts nothing.

Measured in one run, each figure next to a baseline from the same run:
1. in process, one core: EMV payload encoding (``checkout_qr.dynamic``), PNG and SVG rendering
   with the standard's automatic mask choice and with the fixed mask the gateway uses;
2. over HTTP against ``gateway serve`` on 127.0.0.1 (fresh ``gateway_bench_qr`` database):
   payment creation alone (the baseline), creation + QR issue (payload only), and creation + QR
   issue + the PNG image fetched (first fetch: rendered, then cached per process).
Bounded: fixed counts, a concurrency cap, a timeout on every call; the gateway is always stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import payments as harness  # noqa: E402  (the payments benchmark's gateway and database helpers)

from gateway.domain import checkout_qr  # noqa: E402
from gateway.render import qr_image  # noqa: E402

FACE = checkout_qr.MerchantFace("Lanzhou Noodle House", "Beijing", "5812", "CN", "兰州拉面馆", "北京", "zh")
DB_URL = "postgresql://postgres@127.0.0.1:5432/gateway_bench_qr"


def rate(fn: Callable[[int], object], count: int) -> float:
    started = time.perf_counter()
    for i in range(count):
        fn(i)
    return count / (time.perf_counter() - started)


def payload(i: int) -> str:
    return checkout_qr.dynamic("org.walletgateway", f"tok{i:013d}", FACE, 156, 3_800 + i, 2, f"T1-{i:06d}", "Counter 1")


def in_process(n: int) -> None:
    print("== in process, one core ==")
    encode = rate(payload, n * 20)
    text = payload(1)
    png_auto = rate(lambda i: qr_image.render_png(text), n)
    png_fixed = rate(lambda i: qr_image.render_png(text, mask_pattern=0), n)
    svg_fixed = rate(lambda i: qr_image.render_svg(text, mask_pattern=0), n)
    print(f"  payload encode             {encode:>9,.0f}/s   (baseline)")
    for name, value in (("PNG, automatic mask", png_auto), ("PNG, fixed mask (used)", png_fixed),
                        ("SVG, fixed mask (used)", svg_fixed)):
        print(f"  {name:<26} {value:>9,.0f}/s   = {value / encode:.4f}x encode")
    print(f"  fixed mask / automatic mask for PNG: {png_fixed / png_auto:.1f}x")


async def timed_phase(name: str, count: int, concurrency: int, op: Callable[[int], Awaitable[None]]) -> float:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def one(i: int) -> None:
        async with gate:
            started = time.perf_counter()
            await op(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    per_s = count / (time.perf_counter() - started)
    latencies.sort()
    p50, p99 = latencies[len(latencies) // 2] * 1000, latencies[int(len(latencies) * 0.99) - 1] * 1000
    print(f"  {name:<40} {per_s:>7,.1f}/s   p50 {p50:6.1f} ms   p99 {p99:6.1f} ms")
    return per_s


async def over_http(n: int, concurrency: int) -> None:
    print("== over HTTP (gateway serve, 1 process) ==")
    await harness.recreate_database(DB_URL, harness.db_name(DB_URL))
    port = harness.free_port()
    env = {**os.environ, "PYTHONPATH": str(harness.REPO), "GATEWAY_DATABASE_URL": DB_URL,
           "GATEWAY_SERVER_PORT": str(port), "GATEWAY_AUTH_RATE_LIMIT_PER_S": "100000"}
    harness.run_cli(env, "migrate")
    harness.run_cli(env, "create-operator", "--email", harness.OPERATOR_EMAIL, stdin=harness.OPERATOR_PASSWORD + "\n")
    log = Path(tempfile.mkdtemp(prefix="gateway-bench-qr-")) / "gateway.log"
    gateway = harness.Gateway(env, port, 1, log)
    gateway.start()
    try:
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=concurrency)) as s:
            await gateway.wait_ready(s)
            api = harness.Api(s, gateway.base_url)
            ops = (await api.seed("POST", "/v1/operator/sessions", 201,
                                  body={"email": harness.OPERATOR_EMAIL, "password": harness.OPERATOR_PASSWORD}))["token"]
            m = await api.seed("POST", "/v1/merchants", 201, ops, {"name": "Lanzhou Noodle House", "mcc": "5812",
                               "country": "CN", "city": "Beijing", "name_local": "兰州拉面馆", "city_local": "北京"})
            secret = (await api.seed("POST", f"/v1/merchants/{m['id']}/api_keys", 201, ops, {"kind": "secret"}))["secret"]
            auth = {"Authorization": f"Bearer {secret}"}

            async def post(path: str, body: dict[str, Any]) -> Any:
                async with s.post(gateway.base_url + path, json=body,
                                  headers={**auth, "Idempotency-Key": str(uuid.uuid4())}) as resp:
                    if resp.status != 201:
                        raise RuntimeError(f"{path}: {resp.status} {await resp.text()}")
                    return await resp.json()

            async def create(i: int) -> Any:
                return await post("/v1/payments", {"amount": 100 + i, "currency": "CNY", "merchant_reference": f"B{i}"})

            async def issue(i: int) -> Any:
                p = await create(i)
                return await post(f"/v1/payments/{p['id']}/qr_codes", {"terminal_label": "Counter 1"})

            async def issue_with_image(i: int) -> None:
                code = await issue(i)
                async with s.get(gateway.base_url + code["image_png"], headers=auth) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"image: {resp.status}")

            async def just_create(i: int) -> None:
                await create(i)

            async def just_issue(i: int) -> None:
                await issue(i)

            await timed_phase("warm-up", n // 4, concurrency, just_create)
            base = await timed_phase("create payment (baseline)", n, concurrency, just_create)
            payload_only = await timed_phase("create + issue QR (payload)", n, concurrency, just_issue)
            with_image = await timed_phase("create + issue QR + PNG image", n, concurrency, issue_with_image)
            print(f"  issue (payload) / baseline: {payload_only / base:.2f}x;"
                  f" issue + image / baseline: {with_image / base:.2f}x")
    finally:
        gateway.stop()
        await harness.drop_database(DB_URL, harness.db_name(DB_URL))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small counts, to check the script")
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    n = 40 if args.quick else args.count
    in_process(max(10, n // 4))
    asyncio.run(over_http(n, args.concurrency))
    return 0


if __name__ == "__main__":
    sys.exit(main())
