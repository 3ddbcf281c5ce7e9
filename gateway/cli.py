"""Command line: gateway serve | migrate | create-operator | check | settle | reconcile | fx-rates-import | demo."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import gateway
from gateway import logs, settings as settings_mod
from wallet_common.config import render

if TYPE_CHECKING:
    from gateway.settings import Settings

# Modules that import prometheus_client (the store, the app) are imported inside the commands:
# ``serve`` must set PROMETHEUS_MULTIPROC_DIR first, since prometheus_client picks its value
# class when it is first imported.
DATABASE_SETTING = "database.url / GATEWAY_DATABASE_URL"
log = logging.getLogger("gateway.cli")


async def _database_reachable(config: Settings) -> None:
    """Wait (``database.connect_wait_s``) for PostgreSQL, saying once which setting and address."""
    from gateway.store import db

    def waiting(exc: BaseException, left_s: float) -> None:
        log.warning(
            f"database unreachable at {db.address(config.database.url)} ({DATABASE_SETTING}); retrying for"
            f" {left_s:.0f} s", extra={"error": type(exc).__name__})

    await db.wait_until_reachable(config.database.url, config.database.connect_wait_s, waiting)


async def _prepare(config: Settings, migrate: bool) -> bool:
    """The database reached and its schema current (applied, or checked with ``--no-migrate``); True if
    Redis answers."""
    from gateway.accel import Accelerator
    from gateway.store import db

    await _database_reachable(config)
    if migrate:
        await db.migrate(config.database.url)
    else:
        await db.check_migrated(config.database.url)
    accel = Accelerator(config.redis)
    try:
        return await accel.ping()
    finally:
        await accel.close()


def _metrics_dir() -> str:
    """A fresh private directory for this serve's metric files, named after the master's pid. A master
    that was SIGKILLed could not remove its own: those of masters no longer alive are removed here."""
    for left in Path(tempfile.gettempdir()).glob("gateway-metrics-*-*"):
        pid = left.name.split("-")[2]
        with contextlib.suppress(OSError):
            if pid.isdigit() and left.stat().st_uid == os.getuid() and not _alive(int(pid)):
                shutil.rmtree(left)
    return tempfile.mkdtemp(prefix=f"gateway-metrics-{os.getpid()}-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True


def serve(config: Settings, processes: int, *, migrate: bool) -> None:
    """Serve from ``processes`` supervised processes on one socket (gateway/serve.py); returns only by
    ``SystemExit`` once stopped."""
    assert "prometheus_client" not in sys.modules, "prometheus_client imported before its directory was set"
    metrics_dir = _metrics_dir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # every process of this serve, and only those
    master_pid = os.getpid()
    try:
        from gateway import serve as supervisor
        from gateway.store import db

        listener = supervisor.bind(config.server.host, config.server.port)
        redis_up = asyncio.run(_prepare(config, migrate))
        log.info("gateway started", extra={
            "version": gateway.__version__, "mode": config.auth.key_mode,
            "address": f"http://{config.server.host}:{config.server.port}", "processes": processes,
            "database": db.address(config.database.url), "redis": "up" if redis_up else "down",
        })
        supervisor.run(config, processes, listener)
    finally:
        if os.getpid() == master_pid:  # a serving process leaves through here too, by SystemExit
            shutil.rmtree(metrics_dir, ignore_errors=True)


async def _migrate(config: Settings, status: bool) -> int:
    from gateway.store import db

    await _database_reachable(config)
    if not status:
        applied = await db.migrate(config.database.url)
        print(f"migrations applied: {applied or 'none pending'}")
        return 0
    states = await db.migration_status(config.database.url)
    for state in states:
        when = state.applied_at.isoformat(timespec="seconds") if state.applied_at else "pending"
        print(f"{state.name:<40} {when}{'  CHANGED since applied' if state.changed else ''}")
    pending = sum(1 for state in states if state.applied_at is None)
    print(f"{len(states) - pending} applied, {pending} pending")
    changed = [state.name for state in states if state.changed]
    if changed:
        raise db.MigrationChanged(changed)
    return 0


async def _create_operator(config: Settings, email: str, password: str, role: str) -> None:
    from gateway.services import tenants
    from gateway.services.context import Services
    from gateway.store import db

    await db.migrate(config.database.url)
    svc = await Services.start(config)
    try:
        op_id = await tenants.create_operator(svc, email, password, role)
    finally:
        await svc.stop()
    print(f"operator {email} created with role {role} (id {op_id})")


async def _check(config: Settings) -> int:
    from gateway.services import operations
    from gateway.services.context import Services

    svc = await Services.start(config)
    try:
        report = await operations.invariant_report(svc)
    finally:
        await svc.stop()
    print("ledger invariants: OK" if report.ok else f"ledger invariants BROKEN: {report.violations}")
    return 0 if report.ok else 1


async def _reconcile(config: Settings, path: str, fmt: str | None) -> int:
    """Import and match a bank statement file, with a progress bar and a summary table."""
    import msgspec
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from gateway.services import reconciliation
    from gateway.services.context import Services
    from gateway.store import db

    cap = config.reconciliation.statement_max_bytes
    with open(path, "rb") as handle:  # read at most one byte past the cap: the parser refuses it
        data = handle.read(cap + 1)
    await db.migrate(config.database.url)
    svc = await Services.start(config)
    console = Console()
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as bar:
            tasks: dict[str, object] = {}

            def progress(stage: str, done: int, total: int) -> None:
                task = tasks.get(stage)
                if task is None:
                    task = tasks[stage] = bar.add_task(stage, total=max(total, 1))
                bar.update(task, completed=done, total=max(total, 1))  # type: ignore[arg-type]

            progress("parse", 0, 1)
            reply = await reconciliation.import_statement(svc, None, data, fmt, progress=progress)
    finally:
        await svc.stop()
    summary = msgspec.json.decode(reply.body, type=reconciliation.ImportSummary)
    table = Table(title=f"reconciliation of {path}")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("entries in the file", str(summary.entries))
    table.add_row("entries new", str(summary.entries_new))
    for rule, count in sorted(summary.matched.items()):
        table.add_row(f"matched: {rule}", str(count))
    for kind, count in sorted(summary.exceptions.items()):
        table.add_row(f"exception: {kind}", str(count))
    table.add_row("exceptions newly opened", str(summary.exceptions_opened))
    console.print(table)
    return 0


async def _import_fx_rates(config: Settings, path: str) -> int:
    """Import a rates CSV file: every line or none (a bad line is named, exit status 2)."""
    import msgspec

    from gateway.errors import InvalidRequest
    from gateway.services import fx
    from gateway.services.context import Services
    from gateway.store import db

    cap = config.fx.api_body_max_bytes
    with open(path, encoding="utf-8", newline="") as handle:  # one character past the cap tells it is too large
        text = handle.read(cap + 1)
    if len(text) > cap:
        raise InvalidRequest(f"the file is larger than fx.api_body_max_bytes ({cap})", code="invalid_rate_file")
    await db.migrate(config.database.url)
    svc = await Services.start(config)
    try:
        reply = await fx.import_rates(svc, None, text, None)
    finally:
        await svc.stop()
    summary = msgspec.json.decode(reply.body, type=fx.FxRateImportView)
    print(f"fx rates imported from {path}: {summary.rates_created} ({summary.id})")
    return 0


class _Directory:
    """Writes each file of a run under ``root`` (the first piece truncates, the next ones append)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._started: set[str] = set()

    def write(self, name: str, data: bytes) -> None:
        path = self.root / name
        if name not in self._started:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._started.add(name)
            path.write_bytes(data)
            return
        with path.open("ab") as out:
            out.write(data)


async def _settle(config: Settings, day_text: str, merchant_text: str | None, out: Path | None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from gateway.domain.ids import Kind, decode
    from gateway.services import settlement
    from gateway.services.context import Services

    day = settlement.business_date(day_text)
    merchant_id = None
    if merchant_text is not None:
        merchant_id = decode(Kind.MERCHANT, merchant_text)
        if merchant_id is None:
            print(f"error: no such merchant: {merchant_text}", file=sys.stderr)
            return 2
    console = Console(stderr=True)
    svc = await Services.start(config)
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            closing = progress.add_task("closing batches", total=1)
            run = await settlement.settle(svc, day, merchant_id)
            progress.update(closing, completed=1)
            files_task = progress.add_task("writing files", total=None)

            def advance(phase: str, done: int, total: int) -> None:
                progress.update(files_task, completed=done, total=total)

            root = out or Path(f"settlement-{day.isoformat()}") / run.id
            digests = await settlement.write_run_files(svc, run.id, _Directory(root), advance)
    finally:
        await svc.stop()
    table = Table(title=f"Settlement run {run.id} for {run.business_date}")
    for column in ("currency", "batches", "captured", "refunded", "fee", "net", "payout", "carried"):
        table.add_column(column, justify="right")
    for t in run.totals:
        table.add_row(t.currency, str(t.batch_count), str(t.captured), str(t.refunded), str(t.fee), str(t.net),
                      str(t.payout), str(t.carried))
    Console().print(table)
    print(f"batches closed now: {run.batches_closed_now}; in the run: {run.batch_count}; payouts: {run.payout_count}"
          f" ({run.payouts_without_account} held: no payout account); merchants whose day has not ended:"
          f" {len(run.merchants_not_ended)}")
    print(f"files: {len(digests)} in {root} (manifest.json lists their SHA-256)")
    return 0


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway", description="The wallet payment gateway: serve the HTTP API, run migrations and operator tools.",
        epilog="Settings come from --config FILE (or $GATEWAY_CONFIG, else the defaults inside the package) and"
               " GATEWAY_<SECTION>_<KEY>"
               " environment variables. Exit status 2: a setting, the port, the database or a migration needs fixing.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {gateway.__version__}")
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="settings file (default: $GATEWAY_CONFIG, else the defaults inside the package)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_serve = sub.add_parser("serve", help="run the HTTP gateway (migrates first unless --no-migrate)",
                             description="Run the HTTP gateway: a master process supervising --processes serving"
                                         " processes on one port. SIGTERM or SIGINT drains in-flight requests"
                                         " (server.shutdown_grace_s), then every process exits.")
    p_serve.add_argument("--port", type=int, help="TCP port to listen on (default: server.port)")
    p_serve.add_argument("--processes", type=_positive, default=1, help="serving processes (default: 1; one per core)")
    p_serve.add_argument("--no-migrate", action="store_true",
                         help="do not apply migrations (a database role without DDL rights); refuse to start if one"
                              " is pending")
    p_mig = sub.add_parser("migrate", help="create the database if missing and apply pending migrations",
                           description="The release step: create the database if missing and apply pending"
                                       " migrations, each once, in order. A migration file changed after it was"
                                       " applied is refused (exit status 2).")
    p_mig.add_argument("--status", action="store_true",
                       help="list applied (with their time) and pending migrations; change nothing")
    p_op = sub.add_parser("create-operator", help="create an operator (password read from stdin if not a tty)")
    p_op.add_argument("--email", required=True, help="the operator's login")
    p_op.add_argument("--role", default="admin", choices=["admin", "settlement", "support"],
                      help="what the operator may do (default: admin)")
    sub.add_parser("check", help="run the ledger invariant checker (exit status 1 if broken)")
    p_rec = sub.add_parser("reconcile", help="import a bank statement (camt.053 or CSV) and match it")
    p_rec.add_argument("file", help="the statement file")
    p_rec.add_argument("--format", choices=["camt053", "csv"], help="the file's format (default: detected from the content)")
    p_fx = sub.add_parser("fx-rates-import", help="import FX rates from a CSV file (every line or none)")
    p_fx.add_argument("file", help="CSV with the header base,quote,rate,spread_bps,valid_from,valid_until")
    p_settle = sub.add_parser("settle", help="close a business day's settlement batches and write the run's files")
    p_settle.add_argument("--date", required=True, help="business date, YYYY-MM-DD")
    p_settle.add_argument("--merchant", help="only this merchant (mer_...)")
    p_settle.add_argument("--out", type=Path, help="directory for the files (default settlement-DATE/RUN)")
    p_config = sub.add_parser("config", help="print the settings in effect (file, then environment), secrets redacted")
    p_config.add_argument("--format", choices=["toml", "json"], default="toml", help="output format (default: toml)")
    p_demo = sub.add_parser("demo", help="run the demo of a checkout day against a fresh database")
    p_demo.add_argument("--no-wait", action="store_true", help="exit when the demo is done instead of serving")
    p_demo.add_argument("--port", type=int, help="TCP port of the demo's gateway (default: server.port)")
    return parser


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    port = getattr(args, "port", None)
    try:
        config = settings_mod.load(args.config, server={"port": port}) if port else settings_mod.load(args.config)
    except (ValueError, OSError) as exc:  # bad settings are the operator's to fix: one line, no traceback
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    if args.command in ("serve", "migrate"):
        logs.configure()  # before anything touches the database, so that "migration applied" lines are seen
    try:
        return _run(args, config)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        line = _refusal(exc, config)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return 2


def _refusal(exc: Exception, config: Settings) -> str | None:
    """The one line an operator gets for what they must fix (not a bug: no traceback), or None."""
    import asyncpg

    from gateway.errors import GatewayError
    from gateway.serve import CannotListen
    from gateway.store import db

    if isinstance(exc, GatewayError):
        return f"{exc.code}: {exc.message}" + (f" (at {exc.param})" if exc.param else "")
    if isinstance(exc, (CannotListen, db.MigrationChanged, db.MigrationPending)):
        return _one_line(exc)
    if isinstance(exc, db.DatabaseUrlInvalid):
        return f"{_one_line(exc)} ({DATABASE_SETTING})"
    if isinstance(exc, db.DatabaseUnreachable):
        return f"{_one_line(exc)} ({DATABASE_SETTING}; waited database.connect_wait_s)"
    if isinstance(exc, asyncpg.PostgresError):
        return f"database at {db.address(config.database.url)} ({DATABASE_SETTING}) refused: {_one_line(exc)}"
    return None


def _run(args: argparse.Namespace, config: Settings) -> int:
    if args.command == "serve":
        serve(config, args.processes, migrate=not args.no_migrate)
    elif args.command == "migrate":
        return asyncio.run(_migrate(config, args.status))
    elif args.command == "create-operator":
        password = getpass.getpass("password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
        asyncio.run(_create_operator(config, args.email, password, args.role))
    elif args.command == "check":
        return asyncio.run(_check(config))
    elif args.command == "reconcile":
        return asyncio.run(_reconcile(config, args.file, args.format))
    elif args.command == "fx-rates-import":
        return asyncio.run(_import_fx_rates(config, args.file))
    elif args.command == "settle":
        return asyncio.run(_settle(config, args.date, args.merchant, args.out))
    elif args.command == "config":
        print(render(config, args.format), end="")
    elif args.command == "demo":
        from gateway import demo

        return asyncio.run(demo.main(config, wait=not args.no_wait))
    return 0


if __name__ == "__main__":
    sys.exit(main())
