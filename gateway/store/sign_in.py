"""Sign-in security: challenges (one-time codes, hashed), the code sender's outbox (sealed codes), trusted
devices, sessions and their revocations, verification levels, KYC callbacks seen.

Invariants kept by the statements themselves (so no race can beat them):
- a code attempt is counted in the statement that checks it, and only while the challenge is alive
  (not used, not expired, attempts left): N concurrent guesses take exactly ``attempts_max`` tries,
  and exactly one right answer consumes the challenge;
- a resend replaces the hash (the previous code dies) only after ``resend_interval_s`` and at most
  ``resends_max`` times, and never revives a dead challenge;
- an outbox row holds its sealed code only while pending (a CHECK): sent, failed or dropped, it is gone;
- levels only rise and tiers only strengthen (``GREATEST``/``LEAST`` in the statement);
- a session is revoked once (``revoked_at`` set once); the trigger of migration 0017 NOTIFYs it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

import asyncpg

from gateway.store import db, pages
from gateway.store.db import Connection, one

REVOCATION_CHANNEL = "wallet_session_revocations"
REVOCATION_LISTENER_NAME = "gateway wallet session revocations"
_DEVICE = "id, holder_id, device_id, trusted_at, trusted_by, last_sign_in_at, created_at"
_CHALLENGE = "id, holder_id, reason, device_id, attempts, attempts_max, sends, last_sent_at, expires_at, consumed_at"


async def holder_for_sign_in(conn: Connection, phone: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT id, phone, password_hash, tier, verification_level FROM wallet_holders WHERE phone = $1", phone)
    return row


async def holder_password(conn: Connection, holder_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT id, phone, password_hash FROM wallet_holders WHERE id = $1", holder_id)
    return row


async def trusted_device(conn: Connection, holder_id: uuid.UUID, device_id: str) -> uuid.UUID | None:
    """The device row if the holder proved this device with a code (and has not revoked it since)."""
    found: uuid.UUID | None = await conn.fetchval(
        "SELECT id FROM wallet_devices WHERE holder_id = $1 AND device_id = $2"
        " AND trusted_at IS NOT NULL AND revoked_at IS NULL",
        holder_id, device_id)
    return found


async def challenges_since(conn: Connection, holder_id: uuid.UUID, since: datetime) -> int:
    """Challenges of the holder created since ``since``; the holder's row is locked first, so that
    concurrent sign-ins of one holder count one after the other."""
    await conn.execute("SELECT 1 FROM wallet_holders WHERE id = $1 FOR UPDATE", holder_id)
    count: int = await conn.fetchval(
        "SELECT count(*) FROM sign_in_challenges WHERE holder_id = $1 AND created_at >= $2", holder_id, since)
    return count


async def insert_challenge(
    conn: Connection, challenge_id: uuid.UUID, holder_id: uuid.UUID, reason: str, device_id: str | None,
    code_hash: bytes, attempts_max: int, expires_at: datetime,
) -> asyncpg.Record:
    return await one(
        conn,
        "INSERT INTO sign_in_challenges (id, holder_id, reason, device_id, code_hash, attempts_max, expires_at)"
        f" VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_CHALLENGE}",
        challenge_id, holder_id, reason, device_id, code_hash, attempts_max, expires_at)


async def insert_message(conn: Connection, message_id: uuid.UUID, challenge_id: uuid.UUID, phone: str,
                         sealed_code: bytes) -> None:
    await conn.execute(
        "INSERT INTO sign_in_messages (id, challenge_id, phone, sealed_code) VALUES ($1, $2, $3, $4)",
        message_id, challenge_id, phone, sealed_code)


async def drop_messages(conn: Connection, challenge_id: uuid.UUID) -> None:
    """The challenge's unsent codes are worthless now: forget them."""
    await conn.execute(
        "UPDATE sign_in_messages SET status = 'dropped', sealed_code = NULL, lease_until = NULL"
        " WHERE challenge_id = $1 AND status = 'pending'", challenge_id)


async def attempt_code(conn: Connection, challenge_id: uuid.UUID, code_hash: bytes, now: datetime,
                       reasons: tuple[str, ...]) -> asyncpg.Record | None:
    """Count one try and consume the challenge if the code is right, in one statement. None: the
    challenge is unknown, of another reason than ``reasons``, or dead (used, expired, or out of
    attempts); nothing was counted."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "UPDATE sign_in_challenges SET attempts = attempts + 1,"
        " consumed_at = CASE WHEN code_hash = $2 THEN $3 END"
        " WHERE id = $1 AND consumed_at IS NULL AND attempts < attempts_max AND expires_at > $3"
        f" AND reason = ANY($4::text[]) RETURNING {_CHALLENGE}",
        challenge_id, code_hash, now, list(reasons))
    return row


async def challenge(conn: Connection, challenge_id: uuid.UUID) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_CHALLENGE} FROM sign_in_challenges WHERE id = $1", challenge_id)
    return row


async def resend(conn: Connection, challenge_id: uuid.UUID, code_hash: bytes, now: datetime,
                 interval_s: int, resends_max: int) -> asyncpg.Record | None:
    """A new code for a live challenge, if the last was sent at least ``interval_s`` ago and resends are
    left; None otherwise (the caller reads the challenge to say why)."""
    row: asyncpg.Record | None = await conn.fetchrow(
        "UPDATE sign_in_challenges SET code_hash = $2, sends = sends + 1, last_sent_at = $3"
        " WHERE id = $1 AND consumed_at IS NULL AND attempts < attempts_max AND expires_at > $3"
        " AND last_sent_at <= $3 - make_interval(secs => $4) AND sends <= $5"
        f" RETURNING {_CHALLENGE}",
        challenge_id, code_hash, now, float(interval_s), resends_max)
    return row


async def verify_phone(conn: Connection, holder_id: uuid.UUID, now: datetime, phone_level: int, phone_tier: int
                       ) -> asyncpg.Record:
    """A code reached the phone: the level is at least ``phone`` (never lowered) and the tier at least its."""
    return await one(
        conn,
        "UPDATE wallet_holders SET phone_verified_at = COALESCE(phone_verified_at, $2),"
        " verification_level = GREATEST(verification_level, $3),"
        " tier = CASE WHEN verification_level < $3 THEN LEAST(tier, $4) ELSE tier END"
        " WHERE id = $1 RETURNING id, phone, tier, verification_level",
        holder_id, now, phone_level, phone_tier)


async def trust_device(conn: Connection, holder_id: uuid.UUID, device_id: str, now: datetime) -> uuid.UUID:
    """The holder's device row for ``device_id``, trusted as of now (a revoked one is trusted anew)."""
    found: uuid.UUID = await conn.fetchval(
        """
        INSERT INTO wallet_devices (id, holder_id, device_id, trusted_at, trusted_by, last_sign_in_at)
        VALUES ($1, $2, $3, $4, 'code', $4)
        ON CONFLICT (holder_id, device_id) DO UPDATE
           SET trusted_at = CASE WHEN wallet_devices.revoked_at IS NULL AND wallet_devices.trusted_at IS NOT NULL
                                 THEN wallet_devices.trusted_at ELSE EXCLUDED.trusted_at END,
               trusted_by = CASE WHEN wallet_devices.revoked_at IS NULL AND wallet_devices.trusted_at IS NOT NULL
                                 THEN wallet_devices.trusted_by ELSE 'code' END,
               revoked_at = NULL, last_sign_in_at = EXCLUDED.last_sign_in_at
        RETURNING id
        """,
        uuid.uuid4(), holder_id, device_id, now)
    return found


async def signed_in(conn: Connection, device_row_id: uuid.UUID, now: datetime) -> None:
    await conn.execute("UPDATE wallet_devices SET last_sign_in_at = $2 WHERE id = $1", device_row_id, now)


async def insert_session(conn: Connection, session_id: uuid.UUID, holder_id: uuid.UUID,
                         device_row_id: uuid.UUID | None, expires_at: datetime) -> None:
    await conn.execute(
        "INSERT INTO wallet_sessions (id, holder_id, device_id, expires_at) VALUES ($1, $2, $3, $4)",
        session_id, holder_id, device_row_id, expires_at)


async def session_device(conn: Connection, session_id: uuid.UUID, holder_id: uuid.UUID) -> uuid.UUID | None:
    found: uuid.UUID | None = await conn.fetchval(
        "SELECT device_id FROM wallet_sessions WHERE id = $1 AND holder_id = $2", session_id, holder_id)
    return found


def holder_devices(holder_id: uuid.UUID) -> pages.Query:
    """The holder's trusted devices, newest first."""
    return pages.Query(columns=_DEVICE, source="wallet_devices", key=("created_at", "id"),
                       scope=(pages.cond("holder_id = {}", holder_id), pages.cond("revoked_at IS NULL"),
                              pages.cond("trusted_at IS NOT NULL")))


async def revoke_device(conn: Connection, device_row_id: uuid.UUID, holder_id: uuid.UUID, now: datetime
                        ) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"UPDATE wallet_devices SET revoked_at = $3 WHERE id = $1 AND holder_id = $2 AND revoked_at IS NULL"
        f" AND trusted_at IS NOT NULL RETURNING {_DEVICE}",
        device_row_id, holder_id, now)
    return row


_REVOKED = "id, holder_id, expires_at, revoked_at"


async def revoke_device_sessions(conn: Connection, device_row_id: uuid.UUID, now: datetime) -> list[asyncpg.Record]:
    return list(await conn.fetch(
        f"UPDATE wallet_sessions SET revoked_at = $2 WHERE device_id = $1 AND revoked_at IS NULL"
        f" AND expires_at > $2::timestamptz - interval '1 minute' RETURNING {_REVOKED}",
        device_row_id, now))


async def revoke_other_sessions(conn: Connection, holder_id: uuid.UUID, keep: uuid.UUID | None, now: datetime
                                ) -> list[asyncpg.Record]:
    """Every live session of the holder but ``keep``, and the trust of every device but ``keep``'s."""
    await conn.execute(
        "UPDATE wallet_devices SET revoked_at = $3 WHERE holder_id = $1 AND revoked_at IS NULL"
        " AND id IS DISTINCT FROM (SELECT device_id FROM wallet_sessions WHERE id = $2)",
        holder_id, keep, now)
    return list(await conn.fetch(
        f"UPDATE wallet_sessions SET revoked_at = $3 WHERE holder_id = $1 AND revoked_at IS NULL"
        f" AND id IS DISTINCT FROM $2 AND expires_at > $3::timestamptz - interval '1 minute' RETURNING {_REVOKED}",
        holder_id, keep, now))


async def end_pending_challenges(conn: Connection, holder_id: uuid.UUID, reasons: tuple[str, ...], now: datetime
                                 ) -> int:
    """The holder's live challenges of ``reasons`` end now (expired), with their unsent codes: a sign-in
    begun with the old password cannot finish after a password change."""
    ended: int = await conn.fetchval(
        "WITH ended AS (UPDATE sign_in_challenges SET expires_at = $3 WHERE holder_id = $1 AND reason = ANY($2::text[])"
        " AND consumed_at IS NULL AND expires_at > $3 RETURNING id),"
        " dropped AS (UPDATE sign_in_messages SET status = 'dropped', sealed_code = NULL, lease_until = NULL"
        " WHERE challenge_id IN (SELECT id FROM ended) AND status = 'pending')"
        " SELECT count(*) FROM ended", holder_id, list(reasons), now)
    return ended


async def set_password(conn: Connection, holder_id: uuid.UUID, password_hash: str, now: datetime) -> None:
    await conn.execute("UPDATE wallet_holders SET password_hash = $2, password_changed_at = $3 WHERE id = $1",
                       holder_id, password_hash, now)


async def revoked_alive(conn: Connection, since: datetime, limit: int) -> list[asyncpg.Record]:
    """Revoked sessions whose tokens may still be alive (expiring after ``since``), at most ``limit``."""
    return list(await conn.fetch(
        f"SELECT {_REVOKED} FROM wallet_sessions WHERE revoked_at IS NOT NULL AND expires_at > $1 LIMIT $2",
        since, limit))


async def session_refused(conn: Connection, holder_id: uuid.UUID, session_id: uuid.UUID | None,
                          issued_at: datetime) -> bool:
    """The database's answer for one token: its session revoked, or (a token from before sessions, with no
    sid) a session of its holder revoked since it was issued."""
    if session_id is not None:
        return bool(await conn.fetchval(
            "SELECT revoked_at IS NOT NULL FROM wallet_sessions WHERE id = $1 AND holder_id = $2",
            session_id, holder_id))
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM wallet_sessions WHERE holder_id = $1 AND revoked_at >= $2)",
        holder_id, issued_at))


async def listen_revocations(url: str, on_notify: Callable[[str], None], on_lost: Callable[[], None],
                             timeout_s: float) -> asyncpg.Connection[asyncpg.Record]:
    return await db.listen(url, REVOCATION_CHANNEL, on_notify, timeout_s, on_lost=on_lost,
                           application_name=REVOCATION_LISTENER_NAME)


_LEVEL = "id, phone, tier, created_at, payments_locked_at, pin_hash IS NOT NULL AS pin_set, verification_level"


async def holder_level(conn: Connection, holder_id: uuid.UUID, *, lock: bool) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        f"SELECT {_LEVEL} FROM wallet_holders WHERE id = $1{' FOR UPDATE' if lock else ''}", holder_id)
    return row


async def set_level(conn: Connection, holder_id: uuid.UUID, level: int, tier: int) -> asyncpg.Record:
    """Levels only rise and tiers only strengthen, whatever the caller computed."""
    return await one(
        conn,
        "UPDATE wallet_holders SET verification_level = GREATEST(verification_level, $2), tier = LEAST(tier, $3)"
        f" WHERE id = $1 RETURNING {_LEVEL}",
        holder_id, level, tier)


async def insert_kyc_callback(conn: Connection, message_id: str, holder_id: uuid.UUID | None, level: int | None
                              ) -> bool:
    """False if a callback with this webhook-id was seen already (a replay)."""
    inserted = await conn.execute(
        "INSERT INTO kyc_callbacks (message_id, holder_id, level) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        message_id, holder_id, level)
    return bool(inserted == "INSERT 0 1")


# The code sender's outbox.

async def drop_dead_messages(conn: Connection, now: datetime) -> int:
    """Pending messages whose challenge is dead (used, expired, out of attempts): never sent, forgotten."""
    done = await conn.execute(
        "UPDATE sign_in_messages m SET status = 'dropped', sealed_code = NULL, lease_until = NULL"
        "  FROM sign_in_challenges c"
        " WHERE m.challenge_id = c.id AND m.status = 'pending'"
        "   AND (c.consumed_at IS NOT NULL OR c.expires_at <= $1 OR c.attempts >= c.attempts_max)",
        now)
    return int(done.split()[-1])


async def claim_messages(conn: Connection, now: datetime, lease_s: float, limit: int) -> list[asyncpg.Record]:
    """Lease up to ``limit`` due messages (``FOR UPDATE SKIP LOCKED``: every process may claim at once)."""
    return list(await conn.fetch(
        """
        UPDATE sign_in_messages m SET lease_until = $1 + make_interval(secs => $2), attempts = m.attempts + 1
          FROM (SELECT id FROM sign_in_messages
                 WHERE status = 'pending' AND next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until <= $1)
                 ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) due,
               sign_in_challenges c
         WHERE m.id = due.id AND c.id = m.challenge_id
        RETURNING m.id, m.challenge_id, m.phone, m.sealed_code, m.attempts, c.reason, c.expires_at
        """,
        now, lease_s, limit))


async def message_sent(conn: Connection, message_id: uuid.UUID, now: datetime) -> None:
    await conn.execute(
        "UPDATE sign_in_messages SET status = 'sent', sealed_code = NULL, sent_at = $2, lease_until = NULL,"
        " last_error = NULL WHERE id = $1 AND status = 'pending'", message_id, now)


async def message_failed(conn: Connection, message_id: uuid.UUID, error: str, retry_at: datetime | None) -> None:
    """A failed attempt: due again at ``retry_at``, or failed for good (None) and its code forgotten."""
    if retry_at is None:
        await conn.execute(
            "UPDATE sign_in_messages SET status = 'failed', sealed_code = NULL, lease_until = NULL, last_error = $2"
            " WHERE id = $1 AND status = 'pending'", message_id, error)
        return
    await conn.execute(
        "UPDATE sign_in_messages SET next_attempt_at = $3, lease_until = NULL, last_error = $2"
        " WHERE id = $1 AND status = 'pending'", message_id, error, retry_at)


async def reap(conn: Connection, before: datetime, kyc_before: datetime, limit: int) -> int:
    """Sessions and challenges (with their messages) that ended before ``before``; KYC callback ids
    received before ``kyc_before``. Bounded by ``limit`` per kind."""
    reaped = 0
    for statement in (
        "DELETE FROM wallet_sessions WHERE id IN (SELECT id FROM wallet_sessions WHERE expires_at < $1 LIMIT $2)",
        "DELETE FROM sign_in_messages WHERE challenge_id IN"
        " (SELECT id FROM sign_in_challenges WHERE expires_at < $1 LIMIT $2)",
        "DELETE FROM sign_in_challenges WHERE id IN (SELECT c.id FROM sign_in_challenges c WHERE c.expires_at < $1"
        " AND NOT EXISTS (SELECT 1 FROM sign_in_messages m WHERE m.challenge_id = c.id) LIMIT $2)",
    ):
        reaped += int((await conn.execute(statement, before, limit)).split()[-1])
    reaped += int((await conn.execute(
        "DELETE FROM kyc_callbacks WHERE message_id IN"
        " (SELECT message_id FROM kyc_callbacks WHERE received_at < $1 LIMIT $2)", kyc_before, limit)).split()[-1])
    return reaped
