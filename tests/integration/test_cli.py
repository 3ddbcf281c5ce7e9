"""The command line: migrate creates the database; the first operator comes from create-operator."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import asyncpg

from gateway.store import db


def _run(args: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], input=stdin, env=env, capture_output=True,
                          text=True, timeout=60, check=False)


async def test_migrate_then_create_operator_then_login(tmp_path: object) -> None:
    url = f"postgresql://postgres@127.0.0.1:5432/gateway_cli_{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "GATEWAY_DATABASE_URL": url, "GATEWAY_REDIS_URL": "redis://127.0.0.1:6379/15"}
    try:
        first = await asyncio.to_thread(_run, ["migrate"], env)
        assert first.returncode == 0, first.stderr
        assert "0001_core.sql" in first.stdout
        again = await asyncio.to_thread(_run, ["migrate"], env)
        assert "none pending" in again.stdout
        created = await asyncio.to_thread(_run, ["create-operator", "--email", "root@example.com"], env,
                                          "a-long-operator-password\n")
        assert created.returncode == 0, created.stderr
        assert "a-long-operator-password" not in created.stdout + created.stderr
        duplicate = await asyncio.to_thread(_run, ["create-operator", "--email", "root@example.com"], env,
                                            "a-long-operator-password\n")
        assert duplicate.returncode == 2 and "operator_exists" in duplicate.stderr
        conn = await asyncpg.connect(url)
        try:
            stored = await conn.fetchval("SELECT password_hash FROM operators WHERE email = 'root@example.com'")
        finally:
            await conn.close()
        assert stored.startswith("$argon2id$")
        checked = await asyncio.to_thread(_run, ["check"], env)
        assert checked.returncode == 0 and "OK" in checked.stdout
    finally:
        await db.drop_database(url)
