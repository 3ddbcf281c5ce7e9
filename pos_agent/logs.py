"""JSON log lines on stderr, one object per line, for the agent process.

Invariants:
- Every line is one JSON object with ``ts`` (UTC ISO 8601), ``level``, ``logger``, ``msg`` and any
  ``extra`` fields; exceptions go in ``exc``. Nothing is ever written half a line.
- nfcpy's chatty INFO logging is held at WARNING.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, Final

__all__ = ["JsonFormatter", "configure"]

_STANDARD_ATTRIBUTES: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRIBUTES and not name.startswith("_"):
                entry[name] = value if isinstance(value, str | int | float | bool | None) else repr(value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("nfc").setLevel(logging.WARNING)
