"""One JSON log schema for every process of the project (the gateway and the POS agent).

Invariants:
- every line is one JSON object: ``ts`` (UTC ISO 8601 with milliseconds and ``Z``), ``level`` (lower
  case: debug, info, warning, error, critical), ``logger``, ``msg``, ``service`` (``gateway`` or
  ``pos-agent``), ``version`` (the installed package's), ``pid``; then ``request_id`` when one is set,
  the record's ``extra`` fields, and ``exc`` (the traceback) for an exception. Nothing is ever written
  half a line;
- an extra field never overwrites a schema field, and one named like a credential (``password``,
  ``pin``, ``secret``, ...) is written as ``"[redacted]"``: callers log ids, prefixes and hashes, and a
  mistake is caught here rather than in a log store;
- this module imports nothing from ``gateway`` or ``pos_agent``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterable
from importlib import metadata
from typing import Any, Final

__all__ = ["JsonFormatter", "configure", "package_version", "request_id_var"]

DISTRIBUTION: Final = "wallet-gateway"
REDACTED: Final = "[redacted]"
# Names that only ever hold a credential: never written, whoever passes them.
_CREDENTIAL_NAMES: Final = frozenset({
    "password", "pin", "current_pin", "secret", "device_secret", "api_key", "token", "authorization", "cookie",
    "enrolment_code", "pay_code", "tap_key",
})
_STANDARD_ATTRIBUTES: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


def package_version() -> str:
    """The installed distribution's version ("0+unknown" when run from a tree that was never installed)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "0+unknown"


def utc_timestamp(created_s: float) -> str:
    """``2026-12-01T20:21:49.123Z``: UTC, milliseconds, truncated (a line never dates from the next ms)."""
    # From whole milliseconds: the fraction of a float time alone loses them (x.05 s is 0.0499999... s).
    whole_s, millis = divmod(int(created_s * 1000), 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole_s)) + f".{millis:03d}Z"


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str, version: str | None = None) -> None:
        super().__init__()
        self.service = service
        self.version = package_version() if version is None else version

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": utc_timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "service": self.service,
            "version": self.version,
            "pid": record.process,
        }
        request_id = request_id_var.get()
        if request_id is not None:
            line["request_id"] = request_id
        for name, value in vars(record).items():
            if name in _STANDARD_ATTRIBUTES or name.startswith("_") or name in line:
                continue
            line[name] = REDACTED if name in _CREDENTIAL_NAMES else value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure(service: str, level: str = "INFO", *, quiet: Iterable[str] = ()) -> None:
    """JSON lines on stderr for the whole process; the ``quiet`` loggers (chatty libraries) at WARNING."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)
