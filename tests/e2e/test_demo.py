"""``gateway demo --no-wait``, the README's first command, plays its whole day on a fresh database."""

from __future__ import annotations

import asyncio
import os
import signal

import asyncpg

from tests.e2e.harness import PG_ADMIN_URL, REDIS_URL, REPO_ROOT, VENV_BIN, free_tcp_port, stop_process

DEMO_TIMEOUT_S = 300.0  # the end of day waits up to a minute for the merchant's cutoff


async def test_the_demo_plays_a_full_day() -> None:
    base = f"gateway_e2e_{os.getpid()}_demo_run"
    port = free_tcp_port()  # through the environment: the demo honours GATEWAY_SERVER_PORT
    env = {**os.environ, "GATEWAY_DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{base}",
           "GATEWAY_REDIS_URL": REDIS_URL, "GATEWAY_SERVER_PORT": str(port)}
    process = await asyncio.create_subprocess_exec(
        str(VENV_BIN / "gateway"), "demo", "--no-wait", env=env, cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(process.communicate(), DEMO_TIMEOUT_S)
    finally:
        await stop_process(process, sig=signal.SIGKILL)
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{base}_demo" WITH (FORCE)')
        finally:
            await conn.close()
    text = out.decode(errors="replace")
    assert process.returncode == 0, text[-4000:]
    for seen in ("Sale 1: Alice pays", "Idempotent-Replayed: true", "insufficient_funds", "Counter sale by NFC tap",
                 "the browser returned to", "/orders/done?order=W-1001&payment=pay_",
                 "shop received payment.succeeded", "verified: webhook-signature and Wallet-Signature",
                 "refused: 0", "discount 3.20, she pays 28.80", "the merchant received 32.00",
                 "the same quote once more: HTTP 409 quote_used", "Alice has no EUR; her wallet previews 12.50 EUR =",
                 "brought a gift of 8.88 CNY (Welcome gift)", "HTTP 402 otp_required, a code texted to",
                 "code entered, paid again: succeeded", "Alice's notification: risk.alert",
                 "operators' alert list: require_otp for wh_", "campaign: 1 of 100 places taken, 8.88 spent",
                 "the merchant is paid in EUR", "the same quote for another payment: HTTP 409 quote_used",
                 "CNY back at the payment's own rate", "notification budget.reminder at 80%", "settlement run srun_", "marked paid", "matched 5 by reference; exceptions: 1 unknown_entry",
                 "payout now reconciled", "OK: every entry balances", f"operator console: http://127.0.0.1:{port}/",
                 "its gateway has stopped"):
        assert seen in text, (seen, text[-4000:])
    assert "is running" not in text  # --no-wait: it is not
