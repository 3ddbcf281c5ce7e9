"""The one JSON log schema of the gateway and the agent: fields, level spelling, timestamp format."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from typing import Any

import pytest

from gateway import logs as gateway_logs
from pos_agent import logs as agent_logs
from wallet_common.logs import REDACTED, JsonFormatter, package_version, request_id_var, utc_timestamp

TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")


def _record(level: int = logging.INFO, msg: str = "payment declined %s", args: tuple[Any, ...] = ("now",),
            extra: dict[str, Any] | None = None, exc_info: Any = None) -> logging.LogRecord:
    record = logging.getLogger("gateway.test").makeRecord("gateway.test", level, __file__, 1, msg, args, exc_info,
                                                          extra=extra)
    record.created = 1_795_000_000.1234  # 2026-11-18T11:06:40.123Z
    return record


def _line(record: logging.LogRecord, service: str = "gateway") -> dict[str, Any]:
    text = JsonFormatter(service, version="1.2.3").format(record)
    assert "\n" not in text  # one line per record
    entry: dict[str, Any] = json.loads(text)
    return entry


def test_schema_fields_in_order() -> None:
    entry = _line(_record(extra={"payment_id": "pay_1", "amount_minor": 2600}))
    assert list(entry) == ["ts", "level", "logger", "msg", "service", "version", "pid", "payment_id", "amount_minor"]
    assert entry == {"ts": "2026-11-18T11:06:40.123Z", "level": "info", "logger": "gateway.test",
                     "msg": "payment declined now", "service": "gateway", "version": "1.2.3", "pid": os.getpid(),
                     "payment_id": "pay_1", "amount_minor": 2600}


@pytest.mark.parametrize(("level", "spelled"), [(logging.DEBUG, "debug"), (logging.INFO, "info"),
                                                (logging.WARNING, "warning"), (logging.ERROR, "error"),
                                                (logging.CRITICAL, "critical")])
def test_level_is_lower_case(level: int, spelled: str) -> None:
    assert _line(_record(level))["level"] == spelled


@pytest.mark.parametrize(("created_s", "text"), [
    (0.0, "1970-01-01T00:00:00.000Z"),
    (1_795_000_000.9999, "2026-11-18T11:06:40.999Z"),  # truncated, never rounded into the next second
    (1_795_000_000.05, "2026-11-18T11:06:40.050Z"),
])
def test_timestamp_is_utc_milliseconds_z(created_s: float, text: str) -> None:
    assert utc_timestamp(created_s) == text
    assert TS.fullmatch(text)


def test_request_id_only_when_set() -> None:
    assert "request_id" not in _line(_record())
    token = request_id_var.set("req_abc")
    try:
        assert _line(_record())["request_id"] == "req_abc"
    finally:
        request_id_var.reset(token)


def test_extras_never_overwrite_the_schema_and_credentials_are_redacted() -> None:
    entry = _line(_record(extra={"service": "spoofed", "level": "nothing", "password": "hunter2hunter2",
                                 "pin": "1234", "secret": "sk_test_x", "key_last4": "abcd"}))
    assert entry["service"] == "gateway" and entry["level"] == "info"
    assert entry["password"] == entry["pin"] == entry["secret"] == REDACTED
    assert entry["key_last4"] == "abcd"
    assert "hunter2" not in json.dumps(entry) and "1234" not in json.dumps(entry)


def test_values_json_cannot_encode_are_written_as_text_and_exceptions_in_exc() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        entry = _line(_record(logging.ERROR, extra={"when": object.__new__(object)}, exc_info=sys.exc_info()))
    assert entry["when"].startswith("<object object")
    assert entry["exc"].startswith("Traceback") and "ValueError: boom" in entry["exc"]


@pytest.mark.parametrize(("module", "service"), [("gateway.logs", "gateway"), ("pos_agent.logs", "pos-agent")])
def test_gateway_and_agent_write_the_same_schema(module: str, service: str) -> None:
    """Each process as it configures itself: one JSON line on stderr with its own service name."""
    code = (f"import logging, {module} as m; m.configure('info'); "
            "logging.getLogger('x').warning('hello', extra={'n': 1})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    entry = json.loads(done.stderr)
    assert entry["service"] == service and entry["level"] == "warning" and entry["msg"] == "hello"
    assert entry["version"] == package_version() and entry["pid"] != os.getpid() and entry["n"] == 1
    assert TS.fullmatch(entry["ts"])
    assert {gateway_logs.SERVICE, agent_logs.SERVICE} == {"gateway", "pos-agent"}


def test_the_agent_logs_without_gateway_dependencies() -> None:
    """The counter box has no gateway deps: the shared module must not pull them in."""
    code = ("import sys, wallet_common.logs, pos_agent.logs; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in {'gateway', 'asyncpg', 'argon2'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
