"""Connection pool, migrations and the unit of work.

Invariants:
- a use case runs in exactly one transaction (``Database.transaction``), retried as a whole, a
  bounded number of times, only on serialization failure or deadlock;
- waiting for a pooled connection is bounded (``acquire_timeout_s``) and surfaces as a retryable
  503, never as a hang;
- no session can hold others up for long: every gateway session runs with ``lock_timeout``,
  ``statement_timeout`` and ``idle_in_transaction_session_timeout`` (a stalled process's
  transaction is ended by the server, its row locks freed), and the server checks for vanished
  clients while a statement runs;
- a database that went away, a lost connection, a lock or statement timeout is a retryable 503
  (``database_unavailable`` / ``database_busy``), never a 500: the transaction either committed
  or not, and the client's retry with the same Idempotency-Key finds out which;
- migrations are versioned files applied in order, each in its own transaction, under an
  advisory lock so that several processes starting together apply each once; each file's SHA-256
  is recorded when it is applied, and a file changed after that is refused (migrate and serve).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any, TypeAlias, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from gateway import metrics
from wallet_common.config import url_passwords
from gateway.errors import Unavailable
from gateway.settings import DatabaseSettings

log = logging.getLogger(__name__)

T = TypeVar("T")
# What the store's functions take: a pooled connection, or a plain one (migrations, tests).
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
_MIGRATION_LOCK = 0x6761_7465  # "gate"
_RETRYABLE = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
# The server or the link to it went away (shutdown, crash, restart, network, a session it ended), or
# it is no primary (any more): during a failover no host of a multi-host URL with
# target_session_attrs=read-write accepts writes yet, and a session opened before a demotion is read-only.
_LOST = (
    OSError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError, asyncpg.IdleInTransactionSessionTimeoutError, asyncpg.TooManyConnectionsError,
    asyncpg.TargetServerAttributeNotMatched, asyncpg.ReadOnlySQLTransactionError,
)
# The server ended a statement that waited or ran too long (lock_timeout, statement_timeout).
_TIMED_OUT = (asyncpg.LockNotAvailableError, asyncpg.QueryCanceledError, TimeoutError)


def ran_out(exc: BaseException, ran_s: float, limit_s: float, *, lock_waits: bool = True) -> bool:
    """``exc`` (or the error it was raised from) is the server ending a statement (or, with ``lock_waits``, a
    lock wait) at a limit of ``limit_s`` that the work really reached (``ran_s``): the same errors sooner come
    from elsewhere (an administrator's ``pg_cancel_backend``), which a retry may pass."""
    cause = exc if isinstance(exc, asyncpg.PostgresError) else exc.__cause__
    ended = (asyncpg.QueryCanceledError, asyncpg.LockNotAvailableError) if lock_waits else asyncpg.QueryCanceledError
    return isinstance(cause, ended) and ran_s >= limit_s


def _ms(seconds: float) -> str:
    return str(max(0, round(seconds * 1000)))


def session_settings(settings: DatabaseSettings) -> dict[str, str]:
    """Server settings of every gateway session (0 turns one off)."""
    return {
        "lock_timeout": _ms(settings.lock_timeout_s),
        "statement_timeout": _ms(settings.statement_timeout_s),
        "idle_in_transaction_session_timeout": _ms(settings.idle_in_transaction_timeout_s),
        "client_connection_check_interval": _ms(settings.connection_check_interval_s),
        # Read by gateway_pay_batch (migration 0035): its wait for a campaign's counter row.
        "gateway.campaign_row_wait_ms": _ms(settings.campaign_row_wait_s),
    }


def terminate(conn: Connection) -> None:
    """Close a connection now, whatever state it (or its pool holder) is in."""
    try:
        conn.terminate()
    except (asyncpg.InterfaceError, asyncpg.InternalClientError):
        pass  # already closed, or already given back and detached by asyncpg


def _closed(conn: Connection | None) -> bool:
    """The connection is gone (closed, or terminated and detached after a failure)."""
    if conn is None:
        return True
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:
        return True


def unavailable(exc: BaseException, conn: Connection | None = None) -> Unavailable | None:
    """The retryable 503 a database failure means, or None if it is not one (a bug stays a bug)."""
    if isinstance(exc, _TIMED_OUT):
        return Unavailable("the database is busy; retry with the same idempotency key", code="database_busy")
    # asyncpg's InternalClientError: its protocol state is lost (a session the server ended mid-operation).
    if isinstance(exc, (*_LOST, asyncpg.InternalClientError)) or (
            isinstance(exc, asyncpg.InterfaceError) and _closed(conn)):
        return Unavailable("the database is unavailable; retry with the same idempotency key",
                           code="database_unavailable", retry_after_s=2)
    return None


def _admin_url(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    name = parts.path.lstrip("/") or "postgres"
    return urlunsplit(parts._replace(path="/postgres")), name


async def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it is missing; True if it was created."""
    admin_url, name = _admin_url(url)
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        # Identifiers cannot be parameters; quote it the way PostgreSQL itself would.
        quoted = await conn.fetchval("SELECT quote_ident($1)", name)
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:
            return False
        return True
    finally:
        await conn.close()


async def drop_database(url: str) -> None:
    """Drop the database named in ``url`` if it exists, ending its sessions (tests, benches, the demo)."""
    admin_url, name = _admin_url(url)
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        quoted = await conn.fetchval("SELECT quote_ident($1)", name)
        await conn.execute(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)", timeout=60)
    finally:
        await conn.close()


def migration_files() -> list[tuple[int, str, str]]:
    folder = resources.files("gateway.store").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def checksum(sql: str) -> str:
    return hashlib.sha256(sql.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class MigrationState:
    version: int
    name: str
    applied_at: datetime | None  # None: pending
    changed: bool  # applied, and the file's SHA-256 is no longer the one recorded when it was applied


class MigrationChanged(Exception):
    """An applied migration's file differs from what was applied: the schema is not what the code says."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(f"migration file(s) changed after they were applied: {', '.join(names)}"
                         " (checksum differs from schema_migrations; restore the file, or fix the database by hand)")


class MigrationPending(Exception):
    def __init__(self, names: list[str]) -> None:
        super().__init__(f"{len(names)} migration(s) pending ({', '.join(names)}): run `gateway migrate` first")


_BOOKKEEPING = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),"
    " checksum text)",
    # Tables made before checksums were kept lack the column.
    "ALTER TABLE schema_migrations ADD COLUMN IF NOT EXISTS checksum text",
)


async def _states(conn: Connection, files: list[tuple[int, str, str]]) -> list[MigrationState]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    rows = {}
    if exists:
        has_checksum = await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns"
            " WHERE table_name = 'schema_migrations' AND column_name = 'checksum'"
            " AND table_schema = current_schema())")
        column = "checksum" if has_checksum else "NULL AS checksum"
        rows = {r["version"]: r for r in await conn.fetch(f"SELECT version, applied_at, {column} FROM schema_migrations")}
    states = []
    for version, name, sql in files:
        row = rows.get(version)
        states.append(MigrationState(
            version, name, row["applied_at"] if row else None,
            # No recorded checksum (applied before they were kept): nothing to compare; migrate records one.
            bool(row and row["checksum"] is not None and row["checksum"] != checksum(sql))))
    return states


def _refuse_changed(states: list[MigrationState]) -> None:
    changed = [s.name for s in states if s.changed]
    if changed:
        raise MigrationChanged(changed)


async def migration_status(url: str) -> list[MigrationState]:
    """Every migration file, applied (when) or pending, and whether its file changed since; no writes."""
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except asyncpg.InvalidCatalogNameError:  # no database yet: everything is pending
        return [MigrationState(version, name, None, False) for version, name, _ in migration_files()]
    try:
        return await _states(conn, migration_files())
    finally:
        await conn.close(timeout=10)


async def migrate(url: str) -> list[str]:
    """Create the database if needed and apply pending migrations; returns the names applied.

    Refuses (``MigrationChanged``) before applying anything when an applied file changed. A migration
    applied before checksums were kept gets the current file's checksum recorded: the only record of
    what was applied is the file, so it is trusted once, and any later change to it is caught.
    """
    await ensure_database(url)
    conn = await asyncpg.connect(url, timeout=10)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        for statement in _BOOKKEEPING:
            await conn.execute(statement)
        files = migration_files()
        for version, name, sql in files:
            recorded = await conn.execute(
                "UPDATE schema_migrations SET checksum = $2 WHERE version = $1 AND checksum IS NULL",
                version, checksum(sql))
            if recorded != "UPDATE 0":
                log.info("migration checksum recorded", extra={"migration": name})
        states = await _states(conn, files)
        _refuse_changed(states)
        for state, (version, name, sql) in zip(states, files, strict=True):
            if state.applied_at is not None:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                                   version, name, checksum(sql))
            applied.append(name)
            log.info("migration applied", extra={"migration": name})
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        await conn.close()
    return applied


async def check_migrated(url: str) -> None:
    """For a role without DDL rights: refuse (``MigrationPending`` / ``MigrationChanged``) unless the
    schema is exactly what the migration files say."""
    states = await migration_status(url)
    _refuse_changed(states)
    pending = [s.name for s in states if s.applied_at is None]
    if pending:
        raise MigrationPending(pending)


def _with_port(host: str) -> str:
    port_part = host.rpartition("]")[2] if host.startswith("[") else host  # an IPv6 address is bracketed
    return host if ":" in port_part else f"{host or 'localhost'}:5432"


def address(url: str) -> str:
    """``url`` as a log line may show it: user, hosts with ports (libpq's failover list ``h1:5432,h2``
    too) and database, never a password."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    hosts = ",".join(_with_port(host) for host in parts.netloc.rpartition("@")[2].split(","))
    return f"{parts.scheme}://{user}{hosts}{parts.path}"


class DatabaseUnreachable(Exception):
    def __init__(self, url: str, wait_s: float, cause: BaseException) -> None:
        why = " ".join(str(cause).split()) or type(cause).__name__
        super().__init__(f"database unreachable at {address(url)} after {wait_s:g} s: {why}")


class DatabaseUrlInvalid(Exception):
    """The driver cannot take the URL apart (a port that is no number, an unknown sslmode, ...)."""

    def __init__(self, url: str, cause: ValueError) -> None:
        why = " ".join(str(cause).split()) or type(cause).__name__
        for password in url_passwords(url):
            why = why.replace(password, "<redacted>")
        super().__init__(f"the driver cannot read the database URL: {why}")


# The server is not there (yet): refused, unroutable, timed out, still starting up, or no host of a
# failover list is a primary yet.
_UNREACHABLE = (OSError, TimeoutError, asyncpg.CannotConnectNowError, asyncpg.TargetServerAttributeNotMatched)


async def wait_until_reachable(url: str, wait_s: float, waiting: Callable[[BaseException, float], None]) -> None:
    """Return once PostgreSQL at ``url`` answers; meanwhile retry with backoff (0.25 s doubling to 5 s),
    calling ``waiting(error, seconds_left)`` once at the first failure; after ``wait_s`` raise
    ``DatabaseUnreachable``. A missing database counts as an answer (``migrate`` creates it)."""
    deadline = time.monotonic() + wait_s
    delay_s = 0.25
    told = False
    while True:
        left_s = deadline - time.monotonic()
        try:
            conn = await asyncpg.connect(url, timeout=min(5.0, max(left_s, 1.0)))
        except asyncpg.InvalidCatalogNameError:
            return
        except ValueError as exc:  # asyncpg's ClientConfigurationError is one too: the URL, never the server
            raise DatabaseUrlInvalid(url, exc) from None
        except _UNREACHABLE as exc:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise DatabaseUnreachable(url, wait_s, exc) from exc
            if not told:
                waiting(exc, left_s)
                told = True
            await asyncio.sleep(min(delay_s, left_s))
            delay_s = min(delay_s * 2, 5.0)
            continue
        await conn.close(timeout=5)
        return


async def _no_session_state(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    return None


class Database:
    def __init__(self, pool: asyncpg.Pool, settings: DatabaseSettings) -> None:
        self.pool = pool
        self.settings = settings

    @classmethod
    async def connect(cls, settings: DatabaseSettings) -> Database:
        pool = await asyncpg.create_pool(
            settings.url,
            min_size=settings.pool_min,
            max_size=settings.pool_max,
            command_timeout=settings.command_timeout_s,
            timeout=10,
            server_settings=session_settings(settings),
            # The gateway leaves no session state on a pooled connection (no SET, LISTEN or cursors; the
            # idempotency key lock is released before the connection goes back), so the RESET ALL round
            # trip on every release is skipped; asyncpg still rolls back a transaction left open.
            reset=_no_session_state,
        )
        assert pool is not None
        metrics.DB_POOL_CONNECTIONS_MAX.inc(settings.pool_max)
        return cls(pool, settings)

    async def close(self) -> None:
        metrics.DB_POOL_CONNECTIONS_MAX.dec(self.settings.pool_max)
        await asyncio.wait_for(self.pool.close(), timeout=10)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        started_s = time.perf_counter()
        try:
            conn_cm = self.pool.acquire(timeout=self.settings.acquire_timeout_s)
            conn = await conn_cm.__aenter__()
        except (TimeoutError, asyncio.TimeoutError) as exc:
            raise Unavailable("the database is busy; retry with the same idempotency key", code="database_busy") from exc
        except (*_LOST, asyncpg.InterfaceError) as exc:
            raise Unavailable("the database is unreachable", code="database_unavailable", retry_after_s=2) from exc
        finally:
            metrics.DB_POOL_ACQUIRE_WAIT.observe(time.perf_counter() - started_s)
        metrics.DB_POOL_CONNECTIONS_OPEN.set(self.pool.get_size())
        metrics.DB_POOL_CONNECTIONS_IN_USE.inc()
        try:
            yield conn
        except Exception as exc:
            failure = unavailable(exc, conn)
            if failure is None:
                raise
            log.warning("database call failed: %s", type(exc).__name__)
            if failure.code == "database_unavailable":
                terminate(conn)  # never pooled again: the pool opens a fresh one
            raise failure from exc
        finally:
            metrics.DB_POOL_CONNECTIONS_IN_USE.dec()
            try:
                await conn_cm.__aexit__(None, None, None)
            except Exception:  # a broken connection cannot be reset; the pool replaces it
                log.warning("could not return a connection to the pool", exc_info=True)
                terminate(conn)

    async def run(self, work: Callable[[Connection], Awaitable[T]], conn: Connection | None = None) -> T:
        """Run ``work`` in one transaction, retried whole on serialization failure or deadlock.

        With ``conn`` the transaction runs on that (already acquired) connection.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                if conn is not None:
                    async with conn.transaction():
                        return await work(conn)
                async with self.connection() as own, own.transaction():
                    return await work(own)
            except _RETRYABLE as exc:
                metrics.DB_TRANSACTION_RETRIES.labels("deadlock" if isinstance(exc, asyncpg.DeadlockDetectedError) else "serialization").inc()
                if attempt >= self.settings.retry_count_max:
                    raise Unavailable("too much contention; retry", code="contention") from None
                await asyncio.sleep(random.uniform(0, 0.005 * 2**attempt))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        async with self.connection() as conn:
            return await conn.fetchval(sql, *args)


async def listen(
    url: str, channel: str, on_notify: Callable[[str], None], timeout_s: float, *,
    on_lost: Callable[[], None] | None = None, application_name: str | None = None,
) -> asyncpg.Connection[asyncpg.Record]:
    """A dedicated connection (never pooled) LISTENing on ``channel``: ``on_notify(payload)`` runs at
    each notification, ``on_lost()`` when the connection closes, whoever closed it. Notifications
    committed before a later statement on this connection are delivered before that statement's
    answer, so a round trip (``ping``) is a barrier: after it, every earlier one has been handled."""
    server_settings = {"application_name": application_name} if application_name else None
    conn: asyncpg.Connection[asyncpg.Record] = await asyncpg.connect(url, timeout=timeout_s,
                                                                   server_settings=server_settings)
    try:
        if on_lost is not None:
            conn.add_termination_listener(lambda _conn: on_lost())
        await conn.add_listener(channel, lambda _conn, _pid, _channel, payload: on_notify(payload))
    except BaseException:
        terminate(conn)
        raise
    return conn


async def ping(conn: asyncpg.Connection[asyncpg.Record], timeout_s: float) -> None:
    await conn.execute("SELECT 1", timeout=timeout_s)


async def one(conn: Connection, sql: str, *args: Any) -> asyncpg.Record:
    """The single row a statement must return (an INSERT/UPDATE ... RETURNING that cannot miss)."""
    row = await conn.fetchrow(sql, *args)
    if row is None:
        raise LookupError("statement returned no row")
    return row

