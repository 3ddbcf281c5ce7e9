"""The secret canary (``tests/canary.py``): no secret a test saw is in a log line or in the database.

The plugin in ``tests/conftest.py`` runs this module after every other test of the session; the
scanner's own tests come first and plant secrets to show that the canary can fail.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg

from tests import canary
from tests.conftest import CANARY_MODULE

ICC_KEY = "9F3A61C04E5B27D8A1C3E5F70B2D4869"
SECRET_KEY = "sk_test_Vq3xT9pLm2Rr8sKw1ZyB6nHc4JdF"


def planted(tmp_path: Path) -> canary.Canary:
    found = canary.Canary(tmp_path)
    found.learn({"object": "tap_token", "token_pan": "9990011234567897", "icc_master_key": ICC_KEY})
    found.learn({"id": "key_1", "secret": SECRET_KEY})
    found.learn({"phone": "+8613800000000", "password": "correct horse battery"})
    found.learn({"pin": "135790"})
    found.learn({"object": "pay_code", "code": "191234567890123456"})
    found.learn({"secret": "pk_test_public-by-design", "pin": "12"})
    return found


def test_the_scanner_finds_a_planted_secret_in_a_log_line_and_masks_it(tmp_path: Path) -> None:
    found = planted(tmp_path)
    log = '{"level": "info", "msg": "request", "path": "/v1/payments"}\n{"msg": "auth", "key": "' + SECRET_KEY + '"}\n'
    [finding] = found.scan(log, "session.log")
    assert (finding.kind, finding.where, finding.line_no) == ("API secret key", "session.log", 2)
    assert SECRET_KEY not in str(finding) and "<secret>" in finding.excerpt


def test_the_scanner_finds_each_kind_in_dump_text(tmp_path: Path) -> None:
    found = planted(tmp_path)
    dump = "\n".join([
        "COPY public.tap_tokens (id, pan_hash, icc) FROM stdin;",
        "1\t\\\\x00ff\t\\x" + ICC_KEY.lower(),  # bytea in hex, lower case
        '2\t{"token_pan": "9990011234567897"}',
        "3\tcorrect horse battery",
        '4\t{"body": {"pin": "135790"}}',
        "5\t191234567890123456",
    ])
    kinds = sorted(f.kind for f in found.scan(dump, "pg_dump"))
    assert kinds == ["ICC master key", "PIN", "password", "pay-code", "token PAN"]


def test_the_scanner_ignores_hashes_bare_pins_and_public_keys(tmp_path: Path) -> None:
    found = planted(tmp_path)
    clean = "\n".join([
        "1\t$argon2id$v=19$m=1024,t=1,p=1$c2FsdA$aGFzaA\t135790",  # a PIN as a bare number: an amount, say
        '{"pin_failures": 0, "pin_hash": "$argon2id$v=19$..."}',
        "pk_test_public-by-design\t12\t" + "x" + SECRET_KEY + "y",  # embedded in a longer token: another value
        "last4 7897",
    ])
    assert found.scan(clean, "pg_dump") == []


def test_session_tokens_and_webhook_secrets_are_remembered(tmp_path: Path) -> None:
    found = canary.Canary(tmp_path)
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkZXZfMSJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"
    found.learn({"object": "device_token", "access_token": jwt})
    found.learn({"id": "we_1", "secret": "whsec_Zm9vYmFyYmF6cXV4cXV1eGNvcmdl"})
    found.learn({"token": "not-a-jwt-just-an-id"})  # a tap token's id, say: public
    kinds = sorted(f.kind for f in found.scan(f"Authorization: Bearer {jwt}\nsigned with whsec_Zm9vYmFyYmF6cXV4cXV1eGNvcmdl"
                                              "\nnot-a-jwt-just-an-id", "gateway.log"))
    assert kinds == ["access token (JWT)", "webhook signing secret"]


def test_short_values_are_not_remembered(tmp_path: Path) -> None:
    found = canary.Canary(tmp_path)
    found.learn({"password": "a", "account_number": "12345", "pin": "1"})
    assert found.secrets == {} and found.pins == set()


def test_this_module_runs_last() -> None:
    assert CANARY_MODULE == Path(__file__)


async def test_no_secret_in_any_log_line_or_in_the_database(secret_canary: canary.Canary, _schema: str) -> None:
    """The session's logs, the rows the last test left and a pg_dump of the session's test database."""
    conn = await asyncpg.connect(_schema)
    try:
        secret_canary.scan(await canary.rows_as_text(conn), f"database rows left by {secret_canary.last_db_test}")
    finally:
        await conn.close()
    dump = await asyncio.to_thread(canary.pg_dump, _schema)
    secret_canary.scan(dump, f"pg_dump --data-only of {_schema.rsplit('/', 1)[1]}")
    for path in secret_canary.log_files():
        secret_canary.scan_file(path)
    assert secret_canary.session_log.exists()
    findings = [str(f) for f in secret_canary.findings]
    assert not findings, (
        f"{len(findings)} secret(s) found ({len(secret_canary.secrets)} secret forms and {len(secret_canary.pins)} "
        f"PINs known; files kept in {secret_canary.directory}):\n" + "\n".join(findings[:50]))
